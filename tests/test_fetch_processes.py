"""`fetch --processes N`: worker processes normalise the images, and the prepared dataset (rows, their
order, the image bytes) and fetch_report.json are those of one process; a dead worker and Ctrl-C
are one line."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil  # an accelerate dependency
import pytest
from datasets import Image as ImageFeature
from PIL import Image

from capalign.data.importers import import_source, pipeline
from capalign.data.importers import fetch_report as R
from capalign.data.importers.cc3m import hashed_split
from capalign.data.importers.fetch_report import SkipLog
from capalign.data.importers.image_workers import ImagePool
from capalign.data.importers.records import Candidate
from capalign.data.importers.splits import SPLITS, split_caps
from capalign.errors import InputError
from stopping import sigint_as_at_a_terminal
from test_cli import run_cli
from test_importers_common import (load, low_pixel_limit, make_bad_files, make_escapes,  # noqa: F401
                                   noise_jpeg_bytes, report_json, save)
from test_importers_files import _jsonl, _shard

REPO = Path(__file__).resolve().parents[1]


def _rows(out: Path) -> dict[str, list[tuple]]:
    """Every split's rows in order: (image_id, stored image bytes, captions)."""
    dd = load(out)
    return {name: [(r["image_id"], r["image"]["bytes"], r["captions"])
                   for r in split.cast_column("image", ImageFeature(decode=False))] for name, split in dd.items()}


def _same_as_one_process(source: str, tmp_path: Path, processes: int = 2, **kw) -> dict:
    one = import_source(source, tmp_path / "one", processes=1, **kw)
    many = import_source(source, tmp_path / "many", processes=processes, **kw)
    assert many.rows == one.rows and many.skipped == one.skipped
    assert _rows(tmp_path / "many") == _rows(tmp_path / "one")
    assert report_json(tmp_path / "many") == report_json(tmp_path / "one")  # every skipped record, in order
    return report_json(tmp_path / "one")


def _photo_folder(root: Path, n: int) -> None:
    """n photos of assorted sizes (under the tests' 1000-pixel bomb limit) and modes (JPEG, RGBA PNG, grey)
    between the bad files."""
    make_bad_files(root)
    rows = []
    for i in range(n):
        name = f"p{i:03d}." + ("png" if i % 3 == 0 else "jpg")
        image = Image.open(io.BytesIO(noise_jpeg_bytes((20 + i % 12, 20 + i % 10), seed=i)))
        save(image.convert("RGBA" if i % 3 == 0 else "L" if i % 3 == 1 else "RGB"), root / name)
        rows.append({"file_name": name, "captions": [f"photo {i}", f"picture {i}"]})
        if i % 9 == 4:  # a bad file every few good ones, also past the read-ahead window
            bad = ("empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "bigbomb.png", "missing.jpg")[(i // 9) % 6]
            rows.append({"file_name": bad, "captions": [f"bad {i}"]})
    _jsonl(root / "metadata.jsonl", rows)


def test_folder_import_with_workers_is_byte_identical(tmp_path, low_pixel_limit):
    root = tmp_path / "pics"
    _photo_folder(root, 60)
    esc = make_escapes(root, tmp_path / "outside")
    with open(root / "metadata.jsonl", "a") as f:
        f.writelines(json.dumps({"file_name": ref, "captions": ["escape"]}) + "\n" for ref in esc.values())
    report = _same_as_one_process(str(root), tmp_path, image_size=24)
    # the bombs are bombs in the workers too: they get this process's (lowered) pixel limit
    assert report["skipped"] == {R.EMPTY_FILE: 1, R.TRUNCATED: 1, R.NOT_IMAGE: 1, R.BOMB: 2,
                                 R.MISSING_FILE: 1, R.PATH_ESCAPE: 3}
    assert sum(report["rows"].values()) == 60


@pytest.mark.parametrize("limit", [None, 10])
def test_webdataset_import_with_workers_is_byte_identical(tmp_path, limit):
    _shard(tmp_path / "wds" / "shard-000000.tar", 0, 30, bad=True)
    _shard(tmp_path / "wds" / "shard-000001.tar", 30, 20, bad=True)
    report = _same_as_one_process(str(tmp_path / "wds"), tmp_path, processes=3, limit=limit)
    hashed = Counter(hashed_split(f"{i:06d}", 0) for i in range(50))  # the 50 good samples' splits
    assert report["rows"] == ({s: hashed[s] for s in SPLITS} if limit is None else
                              {s: min(hashed[s], n) for s, n in split_caps(limit).items()})


def _cands(items):
    """Candidates holding encoded bytes; 'bad' items are not images; an Exception item is raised."""
    for i, item in enumerate(items):
        if isinstance(item, Exception):
            raise item
        data = b"not an image" if item == "bad" else noise_jpeg_bytes(seed=i)
        yield Candidate(image_id=str(i), captions=[f"c {i}"], ref=f"item {i}", data=data)


def _iter(items, cap, pool=None):
    log, counts = SkipLog(), {"rows": 0, "captions": 0}
    rows = list(pipeline.iter_rows(_cands(items), cap, 16, log, counts, pool=pool))
    return [(r["image_id"], r["image"]["bytes"]) for r in rows], log.records


def test_reading_ahead_counts_nothing_past_the_limit():
    # a bad image and a broken record after the limit: one process never reads them, nor do workers
    items = ["ok", "bad", "ok", "ok", *(["ok"] * 20), "bad", InputError("line 30: broken")]
    with ImagePool(2) as pool:
        assert _iter(items, 3, pool) == _iter(items, 3)
        rows, records = _iter(items, 3, pool)
        assert len(rows) == 3 and [r["reason"] for r in records] == [R.NOT_IMAGE]
        with pytest.raises(InputError, match="line 30"):  # without a limit the error comes at its turn
            _iter(items, None, pool)


def test_the_workers_get_a_window_not_the_input_and_a_dead_worker_is_one_error():
    read = []

    def payloads():
        for i in range(10_000):
            read.append(i)
            yield Candidate(str(i), ["c"], f"item {i}"), noise_jpeg_bytes(seed=i % 7)

    with ImagePool(2) as pool:
        images = pool.normalized(payloads(), 16, SkipLog())
        next(images)
        assert len(read) == pool.window == 16
        for process in list(pool._pool._processes.values()):  # as the kernel's OOM killer would
            os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(InputError, match="worker process ended abruptly"):
            list(images)


def test_cli_worker_crash_and_ctrl_c_are_one_line(tmp_path, monkeypatch, capsys):
    root = tmp_path / "pics"
    _photo_folder(root, 30)
    # a worker that dies on its first image (os._exit in the worker, not here)
    with monkeypatch.context() as m:
        m.setattr(ImagePool, "_submit", lambda self, payload, size: self._pool.submit(os._exit, 3))
        code, _, err = run_cli(["fetch", str(root), "--out", str(tmp_path / "crashed"), "--processes", "2"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "worker process ended abruptly" in err and not (tmp_path / "crashed").exists()
    # Ctrl-C in the main process while the workers run
    locate, calls = pipeline._locate, []

    def interrupt(cand, shards):
        calls.append(cand)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return locate(cand, shards)

    monkeypatch.setattr(pipeline, "_locate", interrupt)
    code, _, err = run_cli(["fetch", str(root), "--out", str(tmp_path / "stopped"), "--processes", "2"], capsys)
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "stopped").exists()
    def workers():
        try:
            return [p for p in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        except psutil.NoSuchProcess:  # one exited while being listed
            return workers()

    deadline = time.monotonic() + 30  # shut down, they exit in their own time: a loaded machine is slow
    while workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workers()
    code, _, err = run_cli(["fetch", str(root), "--processes", "0"], capsys)
    assert code == 2 and "--processes" in err and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_at_the_terminal_reaches_the_main_process_only(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C does): one line and 130, nothing from the workers."""
    root = tmp_path / "pics"
    _photo_folder(root, 400)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "capalign", "fetch", str(root), "--out", str(tmp_path / "out"),
                             "--processes", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=sigint_as_at_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
            if len(workers) == 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the fetch ended before its workers were seen"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["capalign: interrupted (SIGINT)"], err
    assert not (tmp_path / "out").exists()

