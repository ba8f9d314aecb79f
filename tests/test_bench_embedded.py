"""bench/bench_embedded.py's report logic: --combine's merge of one seed's files and issue 24's bars."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "bench_embedded.py"
spec = importlib.util.spec_from_file_location("bench_embedded", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def figures(cider: float, hallucination: float = 0.1, retrieval: float = 0.9, length: float = 9.0) -> dict:
    return {"CIDEr": cider, "Hallucination": hallucination, "I2T-R@1": retrieval, "T2I-R@1": retrieval / 2,
            "Distinct-2": 0.03, "Length": length}


def test_combine_merges_the_files_of_one_seed_and_orders_the_seeds():
    first = {"seeds": [{"seed": 1, "seconds": {"scst": 10.0}, "pretrained": figures(4.0), "scst": figures(4.5)},
                       {"seed": 0, "seconds": {"scst": 12.0}, "pretrained": figures(4.1), "scst": figures(4.6)}]}
    later = {"seeds": [{"seed": 0, "seconds": {"scst-halluc": 11.0}, "pretrained": figures(4.1),
                        "scst-halluc": figures(4.4)}]}
    merged = bench.merged_by_seed([first, later])
    assert [f["seed"] for f in merged] == [0, 1]
    assert merged[0]["seconds"] == {"scst": 12.0, "scst-halluc": 11.0}
    assert merged[0]["scst"]["CIDEr"] == 4.6 and merged[0]["scst-halluc"]["CIDEr"] == 4.4
    assert "scst-halluc" not in merged[1]


def test_dpo_then_scst_must_end_above_dpo():
    seed = {"pretrained": figures(4.0, hallucination=0.4), "dpo": figures(5.0, hallucination=0.1),
            "held_out_pair_accuracy": 0.97, "dpo-scst": figures(4.9, hallucination=0.1)}
    checked = bench.bars(seed, longest=21)
    assert checked["dpo-scst: CIDEr >= 110% of pretrained"] is True
    assert checked["dpo-scst: CIDEr above DPO's"] is False
    seed["dpo-scst"] = figures(5.1, length=22.0)
    checked = bench.bars(seed, longest=21)
    assert checked["dpo-scst: CIDEr above DPO's"] is True
    assert checked["dpo-scst: length <= longest reference (21 words)"] is False
