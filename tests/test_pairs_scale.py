"""Pair ranking in chunks equals one pycocoevalcap CIDEr call; pair building decodes a batch at a time."""

from __future__ import annotations

import random

import pytest
from pycocoevalcap.cider.cider import Cider

from capalign.metrics.python_tokenizer import tokenize_in_python
from capalign.pairs.ranker import cider_per_candidate

WORDS = "a the red blue green circle square cat dog on sits next to under large small".split()


def one_call(candidates, references):
    """The ranker's former one-call layout: every (image, candidate) key with its image's references."""
    keys = [f"{i}/{k}" for i, cands in enumerate(candidates) for k in range(len(cands))]
    refs = tokenize_in_python({f"{i}/{k}": references[i] for i, cands in enumerate(candidates) for k in range(len(cands))})
    cands = tokenize_in_python({f"{i}/{k}": [c] for i, cs in enumerate(candidates) for k, c in enumerate(cs)})
    _, scores = Cider().compute_score(refs, cands)
    by_key = dict(zip(keys, scores))
    return [[float(by_key[f"{i}/{k}"]) for k in range(len(cs))] for i, cs in enumerate(candidates)]


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
def test_cider_in_chunks_equals_one_call(chunk):
    rng = random.Random(0)
    references = [[sentence(rng) for _ in range(rng.randint(1, 5))] for _ in range(20)]
    candidates = [list(dict.fromkeys(sentence(rng) for _ in range(rng.randint(1, 5)))) for _ in range(20)]
    assert cider_per_candidate(candidates, references, chunk=chunk) == one_call(candidates, references)


def test_make_pairs_from_the_lazy_column_equals_the_decoded_list(workspace, pretrained_run):
    """Pairs built decoding a batch at a time are the pairs built from the whole decoded split."""
    from capalign.data.store import load_prepared
    from capalign.inference.scorer import head_similarity
    from capalign.models.io import load_captioner
    from capalign.pairs.dataset import MIN_RANK_GAP, make_pairs
    from capalign.pairs.generated import best_and_worst_pairs, corrupted_pairs, sample_candidates
    from capalign.pairs.ranker import rank_candidates

    split = load_prepared(workspace / "data" / "shapes")["train"].select(range(12))
    captioner, tokenizer, processor = load_captioner(pretrained_run)
    images = list(split["image"])
    candidates = sample_candidates(captioner, tokenizer, processor, images, 2, 3)
    similarity = head_similarity(captioner, tokenizer, processor, images, candidates)
    ranked = rank_candidates(candidates, split["captions"], split["objects"], similarity)
    expected = best_and_worst_pairs(split, ranked, MIN_RANK_GAP) + corrupted_pairs(split, 3)
    pairs = make_pairs(split, captioner, tokenizer, processor, "auto", seed=3, samples=2)
    assert pairs and pairs == expected


def test_similarity_per_text_batch_and_ranking_in_chunks_equal_the_whole_split_at_once(workspace, pretrained_run):
    """head_similarity scores each text batch as it is embedded (no [candidates, D] embeddings held),
    and ranked_chunks ranks a chunk at a time: the same numbers, to the bit, as the whole at once."""
    import torch

    from capalign.data.store import load_prepared
    from capalign.inference.scorer import RunScorer, head_similarity
    from capalign.models.io import load_captioner
    from capalign.pairs.ranker import rank_candidates, ranked_chunks

    split = load_prepared(workspace / "data" / "shapes")["train"].select(range(30))
    captioner, tokenizer, processor = load_captioner(pretrained_run)
    rng = random.Random(1)
    candidates = [list(dict.fromkeys(sentence(rng) for _ in range(rng.randint(1, 6)))) for _ in range(len(split))]
    similarity = head_similarity(captioner, tokenizer, processor, split["image"], candidates)
    scorer = RunScorer(captioner, tokenizer, processor)
    owners = torch.tensor([i for i, cands in enumerate(candidates) for _ in cands])
    whole = (scorer.embed_images(split["image"])[owners] * scorer.embed_texts([c for cs in candidates for c in cs])).sum(-1)
    assert len(whole) > scorer.batch_size and len(whole) % scorer.batch_size  # two text batches, the last one short
    start = 0
    for i, cands in enumerate(candidates):
        assert similarity[i] == whole[start : start + len(cands)].tolist()
        start += len(cands)
    one = rank_candidates(candidates, split["captions"], split["objects"], similarity)
    chunked = [(first, ranked) for first, ranked in ranked_chunks(candidates, split["captions"], split["objects"],
                                                                  similarity, chunk=7)]
    assert [first for first, _ in chunked] == [0, 7, 14, 21, 28]
    assert [row for _, ranked in chunked for row in ranked] == one
