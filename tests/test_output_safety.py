"""Nothing the user had is lost: every command's output folder goes through one rule (capalign writes
only into a new, empty or its own marked folder; --overwrite replaces its own result only once the new
one is complete), the run-folder lock lets exactly one racer in and never takes another host's, and
bad output paths are one line with exit status 2."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capalign.errors import CapalignError
from capalign.outputs import LOCK, MARKER
from test_cli import run_cli

TINY = ["--config", "tiny.yaml", "--max-steps", "1"]
IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "red_circle.png"


def tree(folder: Path) -> dict[str, str]:
    """Every file below `folder` (relative path -> sha256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(folder: Path, files=("README.md", "config.json", "notes/plan.txt")) -> dict[str, str]:
    """A folder holding the user's own files; returns its tree."""
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"the user's {name}\n")
    return tree(folder)


def refused(code: int, err: str, *words: str) -> None:
    """Exit status 2, at most three stderr lines, no traceback, and `words` in the message."""
    assert code == 2, err
    assert len(err.strip().splitlines()) <= 3 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def here(in_workspace, tmp_path, monkeypatch) -> Path:
    """A fresh current folder with the workspace's tiny config and prepared shapes (as data/shapes)."""
    shutil.copy(in_workspace / "tiny.yaml", tmp_path / "tiny.yaml")
    (tmp_path / "data").mkdir()
    os.symlink(in_workspace / "data" / "shapes", tmp_path / "data" / "shapes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fetch_shapes_into_a_user_folder_is_refused_and_it_stays_intact(here, capsys):
    before = user_folder(here / "mine")
    code, _, err = run_cli(["fetch", "shapes", "--out", "mine", "--limit", "8"], capsys)
    refused(code, err, "capalign did not write", "--out")
    assert tree(here / "mine") == before


def test_dotdot_in_out_is_resolved_before_deciding(here, capsys):
    before = user_folder(here / "D")
    (here / "D" / "sub").mkdir()
    code, _, err = run_cli(["fetch", "shapes", "--out", "D/sub/..", "--limit", "8"], capsys)
    refused(code, err, "capalign did not write")
    assert tree(here / "D") == before
    code, _, err = run_cli(["fetch", "shapes", "--out", "new/sub/..", "--limit", "8"], capsys)
    assert code == 0, err
    assert (here / "new" / "dataset_dict.json").is_file() and not (here / "new" / "sub").exists()


def test_fetch_leaves_a_user_folder_named_like_the_old_temporary_one(here, capsys):
    before = user_folder(here / "out.partial")
    code, _, err = run_cli(["fetch", "shapes", "--out", "out", "--limit", "8"], capsys)
    assert code == 0, err
    assert tree(here / "out.partial") == before and (here / "out" / MARKER).is_file()
    assert not [p for p in here.iterdir() if p.name.startswith(".out")]  # no temporary folder left


def test_fetch_replaces_its_own_dataset_and_one_written_before_markers(here, capsys):
    assert run_cli(["fetch", "shapes", "--out", "ds", "--limit", "8"], capsys)[0] == 0
    (here / "ds" / MARKER).unlink()  # as an older capalign left it: dataset_dict.json only
    code, _, err = run_cli(["fetch", "shapes", "--out", "ds", "--limit", "12", "--seed", "3"], capsys)
    assert code == 0, err
    assert json.loads((here / "ds" / MARKER).read_text())["kind"] == "dataset"


def test_fetch_import_into_a_user_folder_is_refused_before_any_work(here, capsys):
    before = user_folder(here / "mine")
    code, _, err = run_cli(["fetch", str(here / "data" / "shapes"), "--out", "mine"], capsys)
    refused(code, err, "capalign did not write")
    assert tree(here / "mine") == before


@pytest.mark.parametrize("out", ["afile", "afile/below"])
def test_a_regular_file_as_fetch_out_is_refused(here, capsys, out):
    (here / "afile").write_text("keep me")
    code, _, err = run_cli(["fetch", "shapes", "--out", out, "--limit", "8"], capsys)
    refused(code, err, "is a file")
    assert (here / "afile").read_text() == "keep me"


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_fetch_on_a_full_or_read_only_disk_is_one_line(here, capsys, monkeypatch, failure):
    import datasets

    def fail(self, path, **kwargs):
        raise OSError(failure, os.strerror(failure), path)

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", fail)
    code, _, err = run_cli(["fetch", "shapes", "--out", "full", "--limit", "8"], capsys)
    refused(code, err, "cannot write", "--out")
    assert "--resume" not in err and not (here / "full").exists()


def test_an_import_on_a_full_disk_is_one_line_and_leaves_nothing(here, capsys, monkeypatch):
    import datasets

    def full(self, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full)
    code, _, err = run_cli(["fetch", str(here / "data" / "shapes"), "--out", "imported"], capsys)
    refused(code, err, "No space left", "--out")
    assert "--resume" not in err and not (here / "imported").exists()
    assert not [p for p in here.iterdir() if p.name.startswith(".imported")]


def test_bare_pretrain_keeps_a_user_data_shapes_folder(here, capsys):
    (here / "data" / "shapes").unlink()
    before = user_folder(here / "data" / "shapes", ["photos.txt", "train/a.png"])
    code, _, err = run_cli(["pretrain", *TINY], capsys)
    refused(code, err, "data/shapes", "capalign did not write")
    assert tree(here / "data" / "shapes") == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_pretrain_out_into_a_user_folder_is_refused_even_with_overwrite(here, capsys, overwrite):
    before = user_folder(here / "mine")
    code, _, err = run_cli(["pretrain", *TINY, "--out", "mine", *overwrite], capsys)
    refused(code, err, "capalign did not write")
    assert tree(here / "mine") == before


def test_align_out_into_a_user_folder_is_refused(here, capsys, pretrained_run):
    before = user_folder(here / "mine")
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--config", "tiny.yaml", "--max-steps", "1",
                            "--out", "mine", "--overwrite"], capsys)
    refused(code, err, "capalign did not write")
    assert tree(here / "mine") == before


def test_pretrain_out_into_a_prepared_dataset_or_a_file_is_refused(here, capsys):
    assert run_cli(["fetch", "shapes", "--out", "ds", "--limit", "8"], capsys)[0] == 0
    before = tree(here / "ds")
    code, _, err = run_cli(["pretrain", *TINY, "--out", "ds", "--overwrite"], capsys)
    refused(code, err, "prepared dataset, not a run")
    assert tree(here / "ds") == before
    (here / "afile").write_text("keep me")
    code, _, err = run_cli(["pretrain", *TINY, "--out", "afile"], capsys)
    refused(code, err, "is a file")
    assert (here / "afile").read_text() == "keep me"


def test_an_empty_folder_may_be_a_run_folder(here, capsys):
    (here / "empty").mkdir()
    code, _, err = run_cli(["pretrain", *TINY, "--out", "empty"], capsys)
    assert code == 0, err
    assert (here / "empty" / "run.json").is_file() and (here / "empty" / MARKER).is_file()


def test_an_interrupted_overwrite_keeps_the_old_run_and_a_finished_one_replaces_it(here, capsys, pretrained_run, monkeypatch):
    from capalign.models.io import load_captioner
    from capalign.runs import resolve_model
    from capalign.train.engine import Engine

    old = here / "old"
    shutil.copytree(pretrained_run, old)
    kept = lambda: {k: v for k, v in tree(old).items() if k != LOCK}  # noqa: E731  (the lock is this process's)
    before = kept()

    def stopped(self):
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)  # as if it had trained a while
        raise CapalignError("stopped mid-run")

    fit = Engine.fit
    monkeypatch.setattr(Engine, "fit", stopped)
    code, _, err = run_cli(["pretrain", *TINY, "--out", "old", "--overwrite"], capsys)
    refused(code, err, "stopped mid-run")
    assert kept() == before
    load_captioner(resolve_model(old), "cpu")  # still a finished, loadable run
    monkeypatch.setattr(Engine, "fit", fit)
    code, _, err = run_cli(["pretrain", *TINY, "--out", "old", "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((old / "run.json").read_text())["steps"] == 1
    assert [p.name for p in here.iterdir() if p.name.startswith(".old")] == []


def test_compare_report_into_a_user_folder_is_refused_even_with_overwrite(here, capsys):
    before = user_folder(here / "rep", ["index.html", "scores.json"])
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(["compare", "a.json", "b.json", "--report", "rep", *extra], capsys)
        refused(code, err, "capalign did not write", "--report")
        assert tree(here / "rep") == before


def _results(here: Path) -> list[str]:
    import datasets

    ids = datasets.load_from_disk(str(here / "data" / "shapes"))["test"]["image_id"]
    for name, caption in (("a.json", "a red circle"), ("b.json", "a blue square")):
        (here / name).write_text(json.dumps([{"image_id": i, "caption": caption} for i in ids]))
    return ["compare", "a.json", "b.json", "--metrics", "bleu", "--bootstrap", "100"]


def test_compare_replaces_its_own_report_only_with_overwrite(here, capsys):
    args = _results(here)
    code, _, err = run_cli([*args, "--report", "rep"], capsys)
    assert code == 0, err
    before = tree(here / "rep")
    code, _, err = run_cli([*args, "--report", "rep"], capsys)
    refused(code, err, "finished report", "--overwrite")
    assert tree(here / "rep") == before
    code, _, err = run_cli([*args, "--report", "rep", "--overwrite"], capsys)
    assert code == 0, err
    assert (here / "rep" / "index.html").is_file() and not [p for p in here.iterdir() if p.name.startswith(".rep")]


def test_compare_report_as_a_file_or_on_a_read_only_disk_is_one_line(here, capsys, monkeypatch):
    from capalign.evaluation import html_report

    (here / "afile").write_text("keep me")
    code, _, err = run_cli(["compare", "a.json", "b.json", "--report", "afile"], capsys)
    refused(code, err, "is a file", "--report")
    assert (here / "afile").read_text() == "keep me"

    def read_only(out_dir, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(out_dir) / "index.html"))

    monkeypatch.setattr(html_report, "write_report", read_only)
    code, _, err = run_cli([*_results(here), "--report", "ro"], capsys)
    refused(code, err, "cannot write", "read-only", "--report")


@pytest.mark.parametrize("command", ["caption", "evaluate", "compare"])
def test_a_folder_as_output_is_one_line(here, capsys, command):
    (here / "folder").mkdir()
    args = {"caption": ["caption", str(IMAGE)], "evaluate": ["evaluate", "--results", "a.json"],
            "compare": ["compare", "a.json", "b.json"]}[command]
    code, _, err = run_cli([*args, "--output", "folder", "--overwrite"], capsys)
    refused(code, err, "is a folder", "--output")
    assert list((here / "folder").iterdir()) == []


def test_caption_disk_full_names_only_its_own_options(here, capsys, pretrained_run, monkeypatch):
    import capalign.runs as runs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(here / "caps.json"))

    monkeypatch.setattr(runs.tempfile, "mkstemp", full)
    code, _, err = run_cli(["caption", str(IMAGE), "--model", str(pretrained_run), "--output", "caps.json"], capsys)
    refused(code, err, "No space left", "--output")
    assert "--resume" not in err and "--out " not in err and "--out)" not in err


def test_caption_json_never_repeats_an_image_id(here, capsys, pretrained_run):
    for folder, suffix in (("a", ".png"), ("b", ".jpg"), ("b", ".png")):
        (here / folder).mkdir(exist_ok=True)
        from PIL import Image

        Image.open(IMAGE).convert("RGB").save(here / folder / f"photo{suffix}")
    code, _, err = run_cli(["caption", "a", "b", "--model", str(pretrained_run), "--output", "caps.json"], capsys)
    assert code == 0, err
    ids = [r["image_id"] for r in json.loads((here / "caps.json").read_text())]
    assert len(ids) == 3 and len(set(ids)) == 3, ids


RACE = """
import json, multiprocessing, os, random, sys, time
from pathlib import Path
from capalign import runs
from capalign.errors import OutputError
from capalign.runs import lock_run_dir

alive = runs._alive
runs._alive = lambda pid: time.sleep(random.Random(os.getpid()).random() / 20) or alive(pid)  # widens the race window

def race(folder, start, done, results):
    start.wait()
    try:
        lock_run_dir(Path(folder))
        results.put(1)
    except OutputError:
        results.put(0)
    done.wait()  # the winner keeps the lock until every racer has tried (a forked child runs no atexit)

folder, racers = sys.argv[1], int(sys.argv[2])
context = multiprocessing.get_context("fork")  # forked from this small interpreter, not from pytest's
start, done, results = context.Barrier(racers), context.Barrier(racers), context.SimpleQueue()
procs = [context.Process(target=race, args=(folder, start, done, results)) for _ in range(racers)]
for p in procs:
    p.start()
for p in procs:
    p.join(timeout=60)
if any(p.exitcode != 0 for p in procs):
    sys.exit('a racer failed')
wins = sum(results.get() for _ in procs)
print(json.dumps({"wins": wins, "pids": [p.pid for p in procs]}))
"""


@pytest.mark.parametrize("repetition", range(4))
def test_racers_over_a_stale_lock_let_exactly_one_in(tmp_path, repetition):
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", RACE, str(folder), "12"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["wins"] == 1
    assert json.loads((folder / LOCK).read_text())["pid"] in result["pids"]


@pytest.mark.parametrize("alive", [True, False], ids=["live-pid", "pid-unknown-here"])
def test_another_hosts_lock_is_never_taken_over(here, capsys, alive):
    (here / "shared").mkdir()
    record = {"pid": os.getpid() if alive else 999999, "host": "other-host.example"}
    (here / "shared" / LOCK).write_text(json.dumps(record))
    code, _, err = run_cli(["pretrain", *TINY, "--out", "shared"], capsys)
    refused(code, err, "other-host.example", str(record["pid"]), "delete")
    assert json.loads((here / "shared" / LOCK).read_text()) == record
    assert not (here / "shared" / "run.json").exists()
