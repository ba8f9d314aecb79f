"""BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D), SPICE through pycocoevalcap, exactly as its COCOEvalCap does.

Captions are tokenized once with pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, lower-cased,
punctuation removed); each scorer then gets the same tokenized dicts that COCOEvalCap would give it.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager, redirect_stdout
from importlib import import_module
from pathlib import Path
from typing import Iterator

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import get_stanford_models as stanford_models
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from capalign.metrics.cider_reward import CiderD, document_frequency
from capalign.metrics.types import CHUNK_IMAGES, EvaluationResult
from capalign.reporting import log

SPICE_JAR_NAME = "stanford-corenlp-3.6.0.jar"
SPICE_FETCH = (
    "python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'"
)


@contextmanager
def _quiet_java_stderr() -> Iterator[None]:
    """Hide the Java tools' progress chatter on fd 2; replay it if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            replay = sink.read().decode(errors="replace")[-4000:].strip()
            if replay:
                log.warning(replay)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def java_missing() -> str | None:
    """Why pycocoevalcap's Java tools cannot run here (None: java is on the PATH)."""
    if shutil.which("java"):
        return None
    return "needs Java for pycocoevalcap's PTB tokenizer (java is not on the PATH; e.g. apt install openjdk-17-jre-headless)"


def tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """PTB-tokenize {image id: [captions]} with pycocoevalcap's tokenizer (one Java call)."""

    with _quiet_java_stderr():
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def bleu_stats(gts: dict[str, list[str]], res: dict[str, list[str]]) -> np.ndarray:
    """Per-image BLEU sufficient statistics from pycocoevalcap's own n-gram cooking:
    columns testlen, reflen (closest), guess 1-4, correct 1-4."""

    rows = []
    for key in gts:
        comps = cook_test(res[key][0], cook_refs(gts[key]), eff="closest")
        rows.append([comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10)


def bleu_from_stats(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 from summed statistics (shape [..., 10]) — the aggregation of pycocoevalcap's
    BleuScorer.compute_score, vectorised so bootstrap resamples of BLEU are exact (hand-written
    because the library only scores one fixed corpus at a time)."""
    small, tiny = 1e-9, 1e-15
    testlen, reflen = totals[..., 0], totals[..., 1]
    guess, correct = totals[..., 2:6], totals[..., 6:10]
    ratios = (correct + tiny) / (guess + small)
    bleus = np.stack([np.prod(ratios[..., : k + 1], axis=-1) ** (1.0 / (k + 1)) for k in range(4)], axis=-1)
    ratio = (testlen + tiny) / (reflen + small)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleus * penalty[..., None]


def spice_unavailable() -> str | None:
    """None when SPICE can run; else a one-line reason. Tries pycocoevalcap's CoreNLP download once
    (15 s socket timeout) when the jar is not cached."""
    spice_dir = Path(import_module("pycocoevalcap.spice.spice").__file__).parent
    if (spice_dir / "lib" / SPICE_JAR_NAME).exists():
        return None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        with _quiet_java_stderr(), redirect_stdout(io.StringIO()):
            stanford_models.get_stanford_models()
    except Exception as exc:  # offline: URLError, timeout, partial zip
        return (
            f"SPICE needs Stanford CoreNLP 3.6.0 (~385 MB), not cached in {spice_dir / 'lib'} and the download "
            f"failed ({type(exc).__name__}); run on a connected machine: {SPICE_FETCH}"
        )
    finally:
        socket.setdefaulttimeout(previous)
    return None if (spice_dir / "lib" / SPICE_JAR_NAME).exists() else "SPICE CoreNLP download did not produce the jar"


@functools.lru_cache(maxsize=1)
def meteor_scorer():
    """One pycocoevalcap Meteor (a Java process, ~5 s to start) per Python process; every EVAL request
    it answers is independent of the previous ones."""

    with _quiet_java_stderr():
        return Meteor()


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHUNK_IMAGES):
        yield ids[start : start + CHUNK_IMAGES]


def _bleu(ids, gts, res) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corpus BLEU-1..4, per-image BLEU [4, N], per-image statistics [N, 10]), a chunk of images at a
    time: per image pycocoevalcap's own numbers, the corpus from the summed statistics (its
    aggregation, so equal to one call over every image)."""
    per, stats = [], []
    for chunk in _chunks(ids):
        _, scores = Bleu(4).compute_score({i: gts[i] for i in chunk}, {i: res[i] for i in chunk}, verbose=0)
        per.append(np.asarray(scores, dtype=np.float64).reshape(4, -1))
        stats.append(bleu_stats({i: gts[i] for i in chunk}, res))
    stats_all = np.concatenate(stats)
    return bleu_from_stats(stats_all.sum(axis=0)), np.concatenate(per, axis=1), stats_all


def _mean_of_chunks(scorer, ids, gts, res) -> tuple[float, np.ndarray]:
    """A per-image-mean metric (pycocoevalcap's Rouge) called a chunk at a time; the same mean."""
    per = np.concatenate([scorer.compute_score({i: gts[i] for i in chunk}, {i: res[i] for i in chunk})[1]
                          for chunk in _chunks(ids)])
    return float(np.mean(per)), per


def _cider(ids, gts, res) -> tuple[float, list[float]]:
    """pycocoevalcap's Cider (CIDEr-D, IDF from these references) with the document frequencies counted
    once over every image's references, then a chunk of images' reference vectors at a time."""
    frequencies = document_frequency(gts[i] for i in ids)
    per: list[float] = []
    for chunk in _chunks(ids):
        scorer = CiderD([gts[i] for i in chunk], tokenized=True, frequencies=frequencies)
        per.extend(scorer.scores(list(range(len(chunk))), [res[i][0] for i in chunk]))
    return float(np.mean(np.array(per))), per


def score_coco(
    candidates: dict[str, str], references: dict[str, list[str]], metrics: list[str], result: EvaluationResult
) -> None:
    """Fill `result` with the requested pycocoevalcap metrics (corpus and per-image)."""

    reason = java_missing()
    if reason:
        result.missing.update({name: reason for name in metrics})
        return
    ids = sorted(candidates)  # SPICE returns per-image scores in sorted id order
    gts = tokenize({i: references[i] for i in ids})
    res = tokenize({i: [candidates[i]] for i in ids})
    score_tokenized(ids, gts, res, metrics, result)


def score_tokenized(ids: list[str], gts: dict[str, list[str]], res: dict[str, list[str]], metrics: list[str],
                    result: EvaluationResult) -> None:
    """`score_coco` on PTB-tokenised references and candidates. BLEU, ROUGE-L and CIDEr run
    CHUNK_IMAGES images at a time (the same numbers as one call); METEOR (its corpus score comes from
    statistics summed inside Java, not a mean of images) and SPICE (a CoreNLP start per call) in one call."""
    version = "pycocoevalcap 1.2 (PTBTokenizer)"

    def put(name: str, corpus: float, per: list[float] | np.ndarray) -> None:
        result.summary[name] = float(corpus)
        result.add_per_image(name, dict(zip(ids, (float(x) for x in per))))
        result.scorers[name] = version

    if any(m.startswith("BLEU") for m in metrics):
        corpus, per, stats = _bleu(ids, gts, res)
        for k in range(4):
            if f"BLEU-{k + 1}" in metrics:
                put(f"BLEU-{k + 1}", corpus[k], per[k])
        result.stats["BLEU"] = dict(zip(ids, stats))  # rows of one array: 10 floats, not 10 float objects, an image
    if "METEOR" in metrics:
        with _quiet_java_stderr():
            corpus, per = meteor_scorer().compute_score(gts, res)
        put("METEOR", corpus, per)
        result.scorers["METEOR"] = version + ", METEOR 1.5 (corpus score from summed statistics)"
    if "ROUGE-L" in metrics:
        put("ROUGE-L", *_mean_of_chunks(Rouge(), ids, gts, res))
    if "CIDEr" in metrics:
        put("CIDEr", *_cider(ids, gts, res))
        result.scorers["CIDEr"] = (version + ", CIDEr-D with IDF from these references (capalign.metrics.cider_reward,"
                                  " equal to pycocoevalcap's Cider)")
    if "SPICE" in metrics:
        reason = spice_unavailable()
        if reason:
            result.missing["SPICE"] = reason
            return

        try:
            with _quiet_java_stderr():
                corpus, per = Spice().compute_score(gts, res)
        except Exception as exc:
            result.missing["SPICE"] = f"SPICE failed: {type(exc).__name__}: {str(exc)[:200]}"
            return
        put("SPICE", corpus, [p["All"]["f"] for p in per])
