import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

from capalign.inference.generate import DecodeOptions, caption_images_scored
from capalign.models.io import load_captioner
from capalign.models.tokenizer import train_word_tokenizer


def test_tokenizer_round_trip_and_reload(tmp_path):
    tokenizer = train_word_tokenizer(["a red circle on the left", "two shapes : a blue square and a red circle"])
    ids = tokenizer("A Red circle : on the left", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "a red circle : on the left"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a blue square", add_special_tokens=False)["input_ids"] == tokenizer("a blue square", add_special_tokens=False)["input_ids"]
    assert again.eos_token == tokenizer.eos_token


def test_run_folder_loads_in_plain_transformers(pretrained_run, workspace):
    from datasets import load_from_disk

    images = load_from_disk(str(workspace / "data" / "shapes"))["test"]["image"][:3]
    captioner, tokenizer, processor = load_captioner(pretrained_run)
    ours = caption_images_scored(captioner, tokenizer, processor, images, DecodeOptions(max_length=12))

    plain = VisionEncoderDecoderModel.from_pretrained(pretrained_run)
    plain_tokenizer = AutoTokenizer.from_pretrained(pretrained_run)
    pixels = AutoImageProcessor.from_pretrained(pretrained_run)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        generated = plain.generate(pixel_values=pixels, max_new_tokens=12, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True)
    assert [t.strip() for t in plain_tokenizer.batch_decode(generated.sequences, skip_special_tokens=True)] == [
        c.caption for c in ours]
    # The tiny model's greedy captions may all be alike (even empty): each image's log-probability,
    # summed here from plain transformers' logits up to and including EOS, tells the models apart.
    steps, eos = len(generated.logits), plain_tokenizer.eos_token_id
    logps = torch.stack(generated.logits, 1).log_softmax(-1).gather(-1, generated.sequences[:, -steps:, None])[..., 0]
    for ids, row, mine in zip(generated.sequences[:, -steps:].tolist(), logps.tolist(), ours):
        n = ids.index(eos) + 1 if eos in ids else len(ids)
        assert plain_tokenizer.convert_ids_to_tokens(ids[:n]) == mine.tokens
        assert sum(row[:n]) == pytest.approx(mine.logprob, abs=1e-4)
    assert len({round(c.logprob, 4) for c in ours}) == 3  # three images, three log-probabilities


def test_contrastive_head_is_saved_with_the_run(pretrained_run):
    captioner, _, _ = load_captioner(pretrained_run)
    assert captioner.head is not None
    assert captioner.head.image_proj.out_features == 16
