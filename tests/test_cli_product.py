"""The CLI as a product: `caption --scores`, `evaluate --references` reproducing published numbers,
nothing but capalign's own output on stdout, and --help that imports no ML library."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from capalign.cli import COMMANDS
from conftest import refdata
from test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("beams", [1, 3])
def test_caption_scores_are_token_probabilities_summing_to_the_sequence(in_workspace, capsys, pretrained_run, beams):
    images = []
    for i, colour in enumerate([(250, 20, 20), (20, 20, 250)]):
        images.append(in_workspace / f"scored{i}.png")
        Image.new("RGB", (64, 64), colour).save(images[-1])
    code, out, err = run_cli(["caption", *map(str, images), "--model", str(pretrained_run), "--scores",
                              "--num-beams", str(beams), "--output", f"scored-{beams}.jsonl"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (in_workspace / f"scored-{beams}.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["tokens"] and len(record["tokens"]) == len(record["probs"])
        assert all(0 < p <= 1 for p in record["probs"])
        assert sum(math.log(p) for p in record["probs"]) == pytest.approx(record["logprob"], abs=1e-4)
        assert f"log p = {record['logprob']:.4f}" in out
    # the plain caption is the same with or without --scores
    code, out2, err = run_cli(["caption", *map(str, images), "--model", str(pretrained_run), "--num-beams", str(beams),
                               "--output", "plain.jsonl"], capsys)
    plain = [json.loads(line)["caption"] for line in (in_workspace / "plain.jsonl").read_text().splitlines()]
    assert plain == [r["caption"] for r in records]


def _coco_files(folder: Path, which: str, out: Path) -> tuple[Path, Path]:
    """The example as the files `evaluate --references` takes: a COCO annotations file built from
    refs.json ({id: [refs]}) and a COCO results file built from {which}_captions.json ({id: caption})."""
    refs = json.loads((folder / "refs.json").read_text())
    cands = json.loads((folder / f"{which}_captions.json").read_text())
    annotations = {"images": [{"id": i} for i in refs],
                   "annotations": [{"image_id": i, "id": n, "caption": c} for n, (i, c) in
                                   enumerate((i, c) for i, cs in refs.items() for c in cs)]}
    (out / "captions_ref.json").write_text(json.dumps(annotations))
    (out / f"{which}_results.json").write_text(json.dumps([{"image_id": i, "caption": c} for i, c in cands.items()]))
    return out / "captions_ref.json", out / f"{which}_results.json"


@pytest.mark.parametrize("example,which,key", [("clipscore_example", "good", "good_captions_with_refs"),
                                                ("clipscore_example", "bad", "bad_captions_with_refs"),
                                                ("pacscore_example", "good", None)])
def test_evaluate_references_reproduces_published_numbers(example, which, key, tmp_path, capsys, monkeypatch):
    folder = refdata(example)
    monkeypatch.chdir(tmp_path)
    expected_all = json.loads((folder / "expected_outputs.json").read_text())
    expected = expected_all[key] if key else next(v for k, v in expected_all.items() if k.startswith(f"{which}_captions"))
    refs, results = _coco_files(folder, which, tmp_path)
    code, out, err = run_cli(["evaluate", "--results", str(results), "--references", str(refs), "--metrics",
                              "bleu,meteor,rouge,cider,clipscore,hallucination,diversity", "--output", "scores.json"], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "scores.json").read_text())["metrics"]
    names = {"ROUGE": "ROUGE-L", "CIDER": "CIDEr"}
    checked = [names.get(k, k) for k in expected if names.get(k, k) in ours]
    assert len(checked) >= 5
    for upstream, value in expected.items():
        if names.get(upstream, upstream) in ours:
            assert round(ours[names.get(upstream, upstream)], 4) == pytest.approx(value, abs=1e-9), upstream
    assert "Distinct-1" in ours  # text-only metrics run from the files alone
    missing = [line for line in err.splitlines() if "needs" in line]
    assert any(line.startswith("CLIPScore missing: CLIPScore needs the images") for line in missing), err
    assert any(line.startswith("Hallucination missing:") for line in missing), err
    assert "testlen" not in out and "ratio:" not in out


def test_evaluate_references_reproduces_coco_fakecap(tmp_path, capsys):
    """coco-caption's demo: the fake results on 1000 COCO val2014 images, scored against the official
    captions_val2014.json. The refdata folder lacks that annotations file (32 MB, see its SOURCE.txt)
    and nothing in it can stand in for it, so the test runs when the file is put beside the results
    (or named by CAPALIGN_COCO_VAL2014) and is skipped otherwise."""
    folder = refdata("coco_fakecap")
    annotations = Path(os.environ.get("CAPALIGN_COCO_VAL2014", folder / "captions_val2014.json"))
    if not annotations.is_file():
        pytest.skip(f"captions_val2014.json (COCO 2014 caption annotations) not found at {annotations}; "
                    "set CAPALIGN_COCO_VAL2014 to reproduce coco-caption's fakecap scores")
    expected = json.loads((folder / "expected_scores.json").read_text())["scores"]
    # coco-caption scores the results' 1000 images only: keep those references (its cocoEval.params['image_id']).
    results = json.loads((folder / "captions_val2014_fakecap_results.json").read_text())
    ids = {r["image_id"] for r in results}
    full = json.loads(annotations.read_text())
    subset = {"images": [i for i in full["images"] if i["id"] in ids],
              "annotations": [a for a in full["annotations"] if a["image_id"] in ids]}
    (tmp_path / "refs.json").write_text(json.dumps(subset))
    code, out, err = run_cli(["evaluate", "--results", str(folder / "captions_val2014_fakecap_results.json"),
                              "--references", str(tmp_path / "refs.json"), "--metrics", "bleu,meteor,rouge,cider",
                              "--output", str(tmp_path / "scores.json")], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "scores.json").read_text())["metrics"]
    names = {"Bleu_1": "BLEU-1", "Bleu_2": "BLEU-2", "Bleu_3": "BLEU-3", "Bleu_4": "BLEU-4", "ROUGE_L": "ROUGE-L"}
    for upstream, value in expected.items():
        if names.get(upstream, upstream) in ours:
            assert round(ours[names.get(upstream, upstream)], 3) == pytest.approx(value, abs=1e-9), upstream


def test_library_prints_stay_off_stdout_unless_verbose(tmp_path, capsys, monkeypatch):
    """pycocoevalcap's own COCOEvalCap calls BLEU with verbose=1, which prints `{'testlen': ...}` and
    `ratio: ...`; make our BLEU do that too and check it never reaches stdout."""
    import pycocoevalcap.bleu.bleu as bleu

    import capalign.metrics.coco as coco

    class ChattyBleu(bleu.Bleu):
        def compute_score(self, gts, res, verbose=1):
            return super().compute_score(gts, res, verbose=1)

    monkeypatch.setattr(coco, "Bleu", ChattyBleu)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "refs.json").write_text(json.dumps({"1": ["a red circle on the left", "a red ball"], "2": ["two blue squares"]}))
    (tmp_path / "res.json").write_text(json.dumps({"1": "a red circle", "2": "a blue square"}))
    args = ["evaluate", "--results", "res.json", "--references", "refs.json", "--metrics", "bleu"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "BLEU-4" in out
    assert not [line for line in out.splitlines() if "testlen" in line or line.startswith("ratio:")], out
    code, out, err = run_cli(["--verbose", *args], capsys)
    assert code == 0 and "testlen" in err and "testlen" not in out


def test_help_imports_no_ml_library():
    code = (
        "import sys\n"
        "from capalign.cli import main, COMMANDS\n"
        "for argv in [['--help']] + [[c.__name__, '--help'] for c in COMMANDS]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (argv, e.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pycocoevalcap', 'huggingface_hub') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr, done.stderr[-500:]
    assert all(f" {c.__name__} " in done.stdout for c in COMMANDS)
