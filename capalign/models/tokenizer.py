"""Caption tokenizers: a word-level tokenizer trained on the dataset's captions (tiny preset)."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, EOS = "<pad>", "<unk>", "<|endoftext|>"


def train_word_tokenizer(captions: Iterable[str], min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Train a lower-cased word-level tokenizer; EOS doubles as BOS (decoder start), pad is separate.

    A separate pad token keeps the end-of-caption token learnable: were pad the EOS token, masking the
    padding out of the loss would mask every EOS too, and the model would never learn to stop.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, EOS], min_frequency=min_frequency)
    tokenizer.train_from_iterator(captions, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK, eos_token=EOS, bos_token=EOS
    )


def ensure_pad_token(tokenizer) -> None:
    """Pretrained GPT-2 tokenizers have no pad token: reuse EOS (collation masks by length, not by id)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
