"""The HTML report names every image and system; evaluate/compare end to end on a tiny prepared dataset."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from capalign.evaluation.stats import Row
from capalign.evaluation.html_report import write_report

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "yellow": (255, 255, 0), "white": (255, 255, 255)}


def test_report_names_every_image_and_system(tmp_path):
    ids = ["7", "12", "x<&>"]
    images = {i: Image.new("RGB", (40, 30), c) for i, c in zip(ids, COLOURS.values())}
    captions = {"sys A": {i: f"caption {i} by A" for i in ids}, "sys-B": {i: f"caption {i} by B" for i in ids}}
    per_image = {"sys A": {i: {"CIDEr": 1.0} for i in ids}, "sys-B": {"7": {"CIDEr": 0.0}, "12": {"CIDEr": 1.0}, "x<&>": {"CIDEr": 0.5}}}
    rows = [Row("CIDEr", "sys A", 1.0, 0.9, 1.1), Row("CIDEr", "sys-B", 0.5, 0.1, 0.9, -0.5, -0.9, -0.1, 0.02, 0.0, 0.33, 0.67)]
    page = write_report(tmp_path, rows, captions, {i: [f"ref of {i}"] for i in ids}, per_image, images, metric="CIDEr")
    text = page.read_text()
    for i in ids[:2]:
        assert f'data-id="{i}"' in text and f"ref of {i}" in text
    assert "x&lt;&amp;&gt;" in text and "x<&>" not in text  # escaped, still named
    for system in captions:
        assert system in text and f"caption 7 by {system[-1]}" in text
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == 3
    assert 'data-disagreement="1.000000"' in text  # image 7: A scores 1, B scores 0
    assert "sortRows" in text


@pytest.fixture()
def tiny_data(tmp_path):
    import datasets

    names = list(COLOURS)
    rows = {"image_id": [], "image": [], "captions": []}
    for k, name in enumerate(names):
        rows["image_id"].append(f"img{k}")
        rows["image"].append(Image.new("RGB", (32, 32), COLOURS[name]))
        rows["captions"].append([f"a {name} square", f"a {name} block on black", "a shape"])
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image(),
                                  "captions": datasets.Sequence(datasets.Value("string"))})
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(tmp_path / "data"))
    good = [{"image_id": f"img{k}", "caption": f"a {n} square"} for k, n in enumerate(names)]
    bad = [{"image_id": f"img{k}", "caption": "a thing"} for k in range(len(names))]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "short.json").write_text(json.dumps(good[:3] + good[:1] + [{"image_id": "nope", "caption": "x"}]))
    return tmp_path


def _run(argv):
    from capalign.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_evaluate_and_compare_end_to_end(tiny_data, capsys):
    d = tiny_data
    out = d / "eval.json"
    assert _run(["evaluate", "--results", str(d / "good.json"), "--data", str(d / "data"),
                 "--metrics", "bleu,rouge,cider,distinct", "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert set(payload["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "Distinct-1", "Distinct-2"}
    assert set(payload["per_image"]) == {f"img{k}" for k in range(5)} and payload["scorers"]["CIDEr"].startswith("pycocoevalcap")

    capsys.readouterr()
    assert _run(["evaluate", "--results", str(d / "short.json"), "--data", str(d / "data"), "--metrics", "cider"]) == 2
    err = capsys.readouterr().err
    assert "missing: img3, img4" in err and "extra: nope" in err and "duplicated: img0" in err

    report = d / "report"
    assert _run(["compare", str(d / "good.json"), str(d / "bad.json"), "--data", str(d / "data"),
                 "--metrics", "bleu,cider", "--report", str(report), "--bootstrap", "200"]) == 0
    html = (report / "index.html").read_text()
    assert all(f'data-id="img{k}"' in html for k in range(5)) and "good" in html and "bad" in html
    scores = json.loads((report / "scores.json").read_text())
    cider = next(r for r in scores["comparison"] if r["metric"] == "CIDEr" and r["system"] == "bad")
    assert cider["delta"] < 0 and cider["loss"] == 1.0 and 0 < cider["p_value"] <= 1
