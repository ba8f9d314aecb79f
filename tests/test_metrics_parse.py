"""--metrics parsing and results-file id matching."""

from __future__ import annotations

import json

import pytest

from capalign.errors import ConfigError, InputError, MissingError
from capalign.metrics import METRIC_NAMES, parse_metrics
from capalign.metrics.results import load_results, match_ids


def test_aliases_and_case():
    assert parse_metrics("bleu") == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]
    assert parse_metrics("CIDEr, rouge ,Bleu_4") == ["BLEU-4", "ROUGE-L", "CIDEr"]
    assert parse_metrics("clipscore,refclipscore,bertscore") == ["BERTScore-F1", "CLIPScore", "RefCLIPScore"]
    assert parse_metrics("chair,hallucination") == ["Hallucination", "CHAIR-s", "CHAIR-i"]
    assert parse_metrics("all") == METRIC_NAMES


def test_unknown_metric_names_it_and_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        parse_metrics("cider,blue")
    assert "'blue'" in str(err.value) and "CIDEr" in str(err.value) and "BLEU-4" in str(err.value)


def test_results_id_mismatch_reports_missing_extra_duplicated(tmp_path):
    path = tmp_path / "res.json"
    records = [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}, {"image_id": 2, "caption": "c"},
               {"image_id": 99, "caption": "d"}, {"image_id": 5}]
    path.write_text(json.dumps(records))
    loaded = load_results(path)
    assert loaded.skipped == 1 and loaded.duplicated == {"2": 2} and loaded.captions["2"] == "b"
    with pytest.raises(InputError) as err:
        match_ids(loaded, ["1", "2", "3", "4"], source="res.json")
    text = str(err.value)
    assert "2 reference images have no caption (missing: 3, 4)" in text
    assert "1 ids are not in the references (extra: 99)" in text
    assert "duplicated: 2" in text and "--allow-partial" in text
    captions, report = match_ids(loaded, ["1", "2", "3", "4"], allow_partial=True)
    assert captions == {"1": "a", "2": "b"} and report.missing == ["3", "4"] and report.extra == ["99"]


def test_results_formats(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"image_id": "x", "caption": "one"}\n{"image_id": "y", "caption": "two"}\n')
    assert load_results(jsonl).captions == {"x": "one", "y": "two"}
    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"x": "one"}))
    assert load_results(mapping).captions == {"x": "one"}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(InputError):
        load_results(bad)
    with pytest.raises(MissingError):
        load_results(tmp_path / "absent.json")
