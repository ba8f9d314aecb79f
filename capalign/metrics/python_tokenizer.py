"""The PTB tokenizer's output without Java, for training-time scoring (align's pair ranker, SCST's
CIDEr-D reward): reported metrics keep pycocoevalcap's Java tokenizer (capalign.metrics.coco)."""

from __future__ import annotations

from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS


def tokenize_in_python(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """`tokenize` without Java, for training-time ranking: NLTK's Penn Treebank tokenizer, then
    lower-casing and pycocoevalcap's punctuation removal. Identical to the PTB tokenizer on every
    shapes caption; on natural text it differs only around rare punctuation (a leading ', a period
    inside a caption), so reported metrics keep using `tokenize`."""
    from nltk.tokenize import TreebankWordTokenizer  # deferred: only training-time scoring needs it

    words, drop = TreebankWordTokenizer(), set(PUNCTUATIONS)

    def one(text: str) -> str:
        lowered = (t.lower() for t in words.tokenize(text, convert_parentheses=True))
        return " ".join(t for t in lowered if t not in drop)  # like the PTB tokenizer: "-lrb-" stays

    return {key: [one(c) for c in texts] for key, texts in captions.items()}
