"""The Python API: capalign.Captioner and capalign.evaluate, and the README's example run as written."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import capalign
from capalign import reporting
from capalign.errors import InputError, MissingError

ROOT = Path(__file__).resolve().parents[1]


def readme_python_api_example() -> str:
    """The ```python block of the README's 'Python API' section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's Python API section has no ```python block"
    return blocks[0]


def test_readme_example_runs(pretrained_run, workspace, tmp_path, monkeypatch, capsys):
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "align").symlink_to(pretrained_run)
    (tmp_path / "data").symlink_to(workspace / "data")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_api_example(), "README.md (Python API)", "exec"), namespace)
    out = capsys.readouterr().out
    captions, scored, scores = namespace["captions"], namespace["scored"], namespace["scores"]
    assert len(captions) == min(8, len(namespace["test"])) and all(isinstance(c, str) for c in captions)
    assert all(c.logprob <= 0 and abs(sum(map(__import__("math").log, c.probs)) - c.logprob) < 1e-4 for c in scored)
    assert {"BLEU-4", "CIDEr"} <= set(scores.metrics) and scores.metrics["CIDEr"] >= 0
    assert "CIDEr" in out
    assert not (pretrained_run / "evaluations.json").exists()  # a --limit evaluation is not recorded in the run


def test_import_capalign_is_cheap_and_lazy():
    code = ("import sys, capalign; assert 'torch' not in sys.modules, 'torch imported';"
            "c = capalign.Captioner; assert 'torch' in sys.modules; print(c.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "capalign.api"
    with pytest.raises(AttributeError):
        capalign.no_such_thing  # noqa: B018


def test_caption_inputs_and_scores(pretrained_run, workspace, tmp_path):
    from datasets import load_from_disk

    captioner = capalign.Captioner.from_pretrained(pretrained_run, device="cpu")
    test = load_from_disk(str(workspace / "data" / "shapes"))["test"]
    pil = test["image"][:3]
    paths = []
    for i, image in enumerate(pil):
        paths.append(tmp_path / f"im{i}.png")
        image.save(paths[-1])
    # The tiny model's greedy captions may all be alike (even empty): each image's log-probability
    # tells the inputs apart, as in test_distributed.py.
    scored = captioner.caption(pil, max_length=12, return_scores=True)
    assert len({round(s.logprob, 4) for s in scored}) == 3  # three images, three log-probabilities
    assert captioner.caption(pil, max_length=12) == [s.caption for s in scored]

    def same(other) -> None:
        assert [(s.caption, s.tokens) for s in other] == [(s.caption, s.tokens) for s in scored]
        assert [s.logprob for s in other] == pytest.approx([s.logprob for s in scored], abs=1e-5)

    same(captioner.caption(paths, max_length=12, return_scores=True))  # PNG round trip is lossless
    same(captioner.caption(test.select(range(3))["image"], max_length=12, return_scores=True))  # a datasets Image column
    one = captioner.caption(str(paths[0]), max_length=12, return_scores=True)  # one image in, one caption out
    same([one] + scored[1:])

    sims = captioner.score(pil, ["a red circle", "a blue square"])
    assert sims.shape == (3, 2) and bool(((sims >= -1 - 1e-5) & (sims <= 1 + 1e-5)).all())
    with pytest.raises(MissingError, match="does not exist"):
        captioner.caption(["nowhere.png"])


def test_score_without_head_is_a_clear_error(pretrained_run):
    captioner = capalign.Captioner.from_pretrained(pretrained_run, device="cpu")
    captioner.module.head = None
    with pytest.raises(InputError, match="no contrastive head"):
        captioner.score([Image.new("RGB", (64, 64))], ["a red circle"])


def test_from_pretrained_hub_id_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(MissingError, match="connected machine") as info:
        capalign.Captioner.from_pretrained("someone/not-cached-captioner")
    assert "\n" not in str(info.value)
    assert time.perf_counter() - start < 5


@pytest.fixture
def notebook(monkeypatch):
    """The process as a notebook has it: capalign.cli never ran (its reporter and console handler,
    which an earlier test's main() installed, are taken away again)."""
    monkeypatch.setattr(reporting, "_reporter", reporting.LoggingReporter())
    monkeypatch.setattr(reporting, "_show_library_output", False)
    monkeypatch.setattr(reporting.log, "handlers", [h for h in reporting.log.handlers if not type(h).__module__.startswith("capalign.cli")])
    monkeypatch.setattr(reporting.log, "propagate", True)
    level = reporting.log.level
    reporting.log.setLevel(logging.NOTSET)  # (setLevel, not setattr: it clears logging's cache of levels)
    yield
    reporting.log.setLevel(level)


def test_the_api_raises_what_the_command_line_says(tmp_path, in_workspace, capsys, notebook):
    from test_cli import run_cli

    missing = tmp_path / "no-such-run"
    with pytest.raises(MissingError) as raised:
        capalign.Captioner.from_pretrained(missing)
    assert isinstance(raised.value, FileNotFoundError) and str(raised.value) == f"Model folder {missing} does not exist."
    assert capsys.readouterr() == ("", "")
    image = ROOT / "examples" / "images"
    code, out, err = run_cli(["caption", str(image), "--model", str(missing)], capsys)
    assert code == 2 and err.splitlines() == [f"capalign: error: {raised.value}"] and "Traceback" not in err


def test_a_notebook_call_logs_and_prints_nothing(tmp_path, capsys, caplog, monkeypatch, notebook):
    results, references = tmp_path / "results.json", tmp_path / "refs.json"
    results.write_text(json.dumps([{"image_id": "1", "caption": "a red circle"}, {"image_id": "2", "caption": "a blue square"},
                                   {"caption": "a record without an image id"}]))
    references.write_text(json.dumps({"1": ["a red circle"], "2": ["a blue square"], "3": ["a green diamond"]}))
    with caplog.at_level(logging.INFO, logger="capalign"):
        scores = capalign.evaluate(results=results, references=references, metrics="bleu", allow_partial=True)
    assert scores.result.summary["BLEU-4"] >= 0
    assert capsys.readouterr() == ("", "")  # pycocoevalcap's own prints are kept off stdout too
    warnings = [r.getMessage() for r in caplog.records if r.name == "capalign" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "skipped 1 records" in warnings[0] and "scoring 2 common images only" in warnings[1]
    monkeypatch.setattr(logging.root, "handlers", [])  # nothing configured at all: still silent (no lastResort line)
    capalign.evaluate(results=results, references=references, metrics="bleu", allow_partial=True)
    assert capsys.readouterr() == ("", "")
