"""The sweep: every file of a finished run (and of an interrupted align run), in turn, truncated to half
or replaced by random bytes of the same length. `caption`, `evaluate` and `align --resume` each exit
2 with one stderr line and no traceback, or exit 0 where the command does not need that file (listed
explicitly below, per command). Runs in-process with the tiny model; align's preference pairs (the
costly sampling, identical on every resume: same policy, same seed) are built once and reused."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from capalign.train import align as align_module
from capalign.train.engine import Engine
from test_cli import run_cli

MODES = ("truncate", "random")
_round_pairs = align_module.round_pairs

# Files each command may do without: a damaged one of these must leave the command working (exit 0).
CAPTION_UNNEEDED = {"README.md", "curves.png", "metrics.jsonl", "run.json", ".capalign.lock"}
EVALUATE_UNNEEDED = CAPTION_UNNEEDED  # README.md: evaluate writes the model card afresh
ALIGN_UNNEEDED = {"checkpoints/latest.json", "metrics.jsonl", ".capalign.lock"}
# Damage that still ends in a traceback in code this sweep does not own; each entry must keep failing
# (so it is removed here when fixed): config.load_config lets a YAML error out (the one-schema issue).
KNOWN = {("align", "capalign.yaml")}


def damage(path: Path, mode: str, seed: int) -> None:
    data = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(random.Random(seed).randbytes(len(data)))


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


class Tally:
    """tried / one line + exit 2 / exit 0 (allowed) / anything else, per command."""

    def __init__(self):
        self.counts: dict[str, list[int]] = {}
        self.bad: list[str] = []

    def add(self, command: str, name: str, mode: str, allowed: bool, code: int, err: str) -> None:
        row = self.counts.setdefault(command, [0, 0, 0, 0])
        row[0] += 1
        lines = err.strip().splitlines()
        if code == 2 and len(lines) == 1 and lines[0].startswith("capalign: error: ") and "Traceback" not in err:
            row[1] += 1
            if allowed:
                self.bad.append(f"{command} {name} ({mode}): refused although not needed: {lines[0]}")
        elif code == 0 and allowed:
            row[2] += 1
        elif (command, name) in KNOWN:
            row[3] += 1
        else:
            row[3] += 1
            self.bad.append(f"{command} {name} ({mode}): exit {code}, {len(lines)} lines: {err.strip()[-300:]}")

    def check(self, known: int = 0) -> None:
        print({c: dict(zip(("tried", "one line", "ok (unneeded)", "traceback or other"), r))
               for c, r in self.counts.items()})
        assert not self.bad, "\n".join(self.bad)
        assert sum(r[3] for r in self.counts.values()) == known, "a KNOWN failure is fixed: remove it from KNOWN"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(path)
    return path


def _sweep(source: Path, scratch: Path, tally: Tally, command: str, argv, unneeded: set[str], capsys,
           skip: set[str] = frozenset()) -> None:
    for index, name in enumerate(files(source)):
        if name in skip:
            continue
        for mode in MODES:
            run = scratch / f"{command}-{index}-{mode}"
            shutil.copytree(source, run, symlinks=True)
            damage(run / name, mode, seed=index)
            try:
                code, _, err = run_cli(argv(run), capsys)
            except Exception as exc:  # a traceback: what the sweep is here to catch
                code, err = -1, f"Traceback: {type(exc).__name__}: {exc}"
                capsys.readouterr()
            tally.add(command, name, mode, name in unneeded, code, err)
            shutil.rmtree(run)


def test_every_damaged_file_of_a_finished_run(pretrained_run, in_workspace, tmp_path, image, capsys):
    source = tmp_path / "source"
    shutil.copytree(pretrained_run, source, ignore=shutil.ignore_patterns("best-*"))  # best-* are not --model
    tally = Tally()
    _sweep(source, tmp_path, tally, "caption", lambda run: ["caption", str(image), "--model", str(run)],
           CAPTION_UNNEEDED, capsys)
    _sweep(source, tmp_path, tally, "evaluate",
           lambda run: ["evaluate", "--model", str(run), "--metrics", "bleu", "--limit", "4"], EVALUATE_UNNEEDED, capsys)
    tally.check()


_PAIRS: dict = {}


def _same_pairs(*args):
    """round_pairs, built once per (round, seed)."""
    key = args[-2:]
    if key not in _PAIRS:
        _PAIRS[key] = _round_pairs(*args)
    return _PAIRS[key]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from capalign.data.store import prepare_shapes

    folder = tmp_path_factory.mktemp("small") / "shapes"
    prepare_shapes(folder, limit=8, seed=0)
    return folder


@pytest.fixture(scope="module")
def interrupted_align(pretrained_run, workspace, small_data, tmp_path_factory) -> Path:
    """An align run stopped (Ctrl-C) at step 2 of 3 (one round): a checkpoint and no run.json."""
    out = tmp_path_factory.mktemp("align") / "run"
    original = Engine._train_batch

    def interrupt(self, batch, window):
        if self.state.step == 2:
            raise KeyboardInterrupt
        return original(self, batch, window)

    old = Path.cwd()
    os.chdir(workspace)
    Engine._train_batch, align_module.round_pairs = interrupt, _same_pairs
    try:
        code, _, err = run_cli(["align", "--model", str(pretrained_run), "--data", str(small_data), "--out", str(out),
                                "--max-steps", "3", "--rounds", "1", "--batch-size", "4"], _NoCapture())
    finally:
        Engine._train_batch, align_module.round_pairs = original, _round_pairs
        os.chdir(old)
    assert code == 130 and not (out / "run.json").exists(), err
    return out


class _NoCapture:
    """run_cli's capsys for a module fixture (capsys is function-scoped): nothing captured."""

    @staticmethod
    def readouterr():
        return "", ""


def test_every_damaged_file_of_an_interrupted_align_run(pretrained_run, interrupted_align, small_data, in_workspace,
                                                        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(align_module, "round_pairs", _same_pairs)
    tally = Tally()
    _sweep(interrupted_align, tmp_path, tally, "align",
           lambda run: ["align", "--model", str(pretrained_run), "--data", str(small_data), "--out", str(run), "--resume",
                        "--max-steps", "3", "--rounds", "1", "--batch-size", "4"], ALIGN_UNNEEDED, capsys)
    tally.check(known=2)
