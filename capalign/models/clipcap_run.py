"""`capalign fetch --model FILE.pt --out DIR`: a ClipCap checkpoint (capalign.models.clipcap) becomes a
finished capalign prefix run folder that `caption`, `evaluate`, `compare` and `align` take.

What ClipCap does, kept exactly:
- the mapper's input is CLIP's projected image embedding (`encode_image`, transformers'
  `CLIPModel.get_image_features`): the run's vision encoder is the CLIP vision tower and CLIP's
  visual projection sits, frozen, at the front of the mapper;
- that embedding is L2-normalised for the transformer mapper (ClipCap's transformer inference
  notebook) and not for the MLP mapper (predict.py, the MLP notebook); `normalize` overrides it for
  checkpoints trained otherwise (train.py --normalize_prefix);
- decoding starts from the prefix alone and stops at the first "." (ClipCap's captions carry no
  end-of-text token) or after 67 tokens.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from transformers import AutoConfig, CLIPModel, GPT2LMHeadModel

from capalign.config import ModelConfig, build_config, save_config
from capalign.errors import InputError
from capalign.model_card import write_model_card
from capalign.models import backbones
from capalign.models.build import build_image_processor, configure_prefix_generation
from capalign.models.captioner import Captioner
from capalign.models.clipcap import HEADS, ClipCapLayout, gpt_state, infer_layout, mapper_state, read_state_dict
from capalign.models.io import save_captioner
from capalign.models.prefix import PrefixCaptionModel, PrefixMapper
from capalign.outputs import claim_output_dir, install
from capalign.reporting import log
from capalign.runs import CONFIG_NAME, mark_finished, write_errors

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
MAX_TOKENS = 67  # ClipCap's entry_length
STOP = "."  # ClipCap's stop_token
_IGNORED_GPT = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved


def is_checkpoint_file(model: str) -> bool:
    """Whether `--model` names an existing checkpoint file (rather than a model name or folder)."""
    path = Path(model).expanduser()
    return path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES


def _load_vision(name: str, layout: ClipCapLayout):
    """(CLIP vision tower, CLIP's visual projection weight, image processor) of `--vision`."""
    path = backbones.resolve(name)
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if config.model_type != "clip":
        raise InputError(f"--vision {name} is a '{config.model_type}' model; ClipCap maps a CLIP image embedding: "
                         "pass the CLIP checkpoint it was trained with (a full CLIP folder or Hub id).")
    if config.projection_dim != layout.image_dim:
        raise InputError(f"the checkpoint maps a {layout.image_dim}-wide image embedding but --vision {name} projects "
                         f"to {config.projection_dim}; pass the CLIP it was trained with (ResNet CLIPs such as "
                         "RN50x4 are not in transformers).")
    clip = CLIPModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    vision = clip.vision_model  # a CLIPVisionModel in transformers 5: what capalign's load_vision gives
    processor = backbones.load_image_processor(name)
    if processor is None:
        processor = build_image_processor(ModelConfig(image_size=config.vision_config.image_size))
    return vision, clip.visual_projection.weight.detach().clone(), processor


def _decoder_config(name: str):
    """(local folder, config) of `--decoder`, which must be a GPT-2."""
    path = backbones.resolve(name)
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if config.model_type != "gpt2":
        raise InputError(f"--decoder {name} is a '{config.model_type}' model; ClipCap checkpoints hold a GPT-2: "
                         "pass the GPT-2 it was trained with.")
    return path, config


def _load_decoder(name: str, layout: ClipCapLayout, state, source: Path):
    """`--decoder`'s GPT-2, with the checkpoint's GPT-2 weights when it has them."""
    path, config = _decoder_config(name)
    wanted = {"n_embd": layout.text_dim, "n_layer": layout.gpt_layers, "vocab_size": layout.vocab_size,
              "n_positions": layout.positions}
    for field, value in wanted.items():
        if value is not None and getattr(config, field) != value:
            raise InputError(f"{source} was trained with a GPT-2 of {field}={value} but --decoder {name} has "
                             f"{field}={getattr(config, field)}; pass the GPT-2 it was trained with.")
    decoder = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if layout.has_gpt:
        weights = {k: v for k, v in gpt_state(state).items() if not k.endswith(_IGNORED_GPT)}
        try:
            missing, unexpected = decoder.load_state_dict(weights, strict=False)
        except RuntimeError as exc:
            raise InputError(f"{source}'s GPT-2 does not fit --decoder {name}: {str(exc).splitlines()[-1].strip()}") from None
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the token embedding
        if missing or unexpected:
            raise InputError(f"{source}'s GPT-2 does not fit --decoder {name}: "
                             f"{'missing ' + missing[0] if missing else 'unexpected gpt.' + unexpected[0]}.")
    return decoder


def _mapper(layout: ClipCapLayout, state, source: Path, vision, projection, normalize: bool) -> PrefixMapper:
    mapper = PrefixMapper(vision.config.hidden_size, layout.text_dim, layout.prefix_length, layout.kind,
                          layers=layout.layers or 8, heads=HEADS, clip_length=layout.clip_length,
                          image_projection=layout.image_dim, normalize=normalize, qkv_bias=layout.qkv_bias)
    weights = mapper_state(state, layout, source)
    weights["image_projection.weight"] = projection
    try:
        mapper.load_state_dict(weights)
    except RuntimeError as exc:
        raise InputError(f"{source}'s mapper does not fit: {str(exc).splitlines()[-1].strip()}") from None
    return mapper


def convert_clipcap(source: Path, out: Path, vision: str, decoder: str, normalize: bool | None = None) -> Path:
    """Write a finished prefix run folder at `out` from the ClipCap checkpoint `source`; returns `out`.
    `normalize` None: as ClipCap's own inference code does for the checkpoint's mapper kind."""
    source, out = Path(source), Path(out)
    claim = claim_output_dir(out, "run")  # a new, empty or capalign's own folder; never a user's
    state = read_state_dict(source)
    layout = infer_layout(state, source, _decoder_config(decoder)[1].n_embd)
    normalize = layout.kind == "transformer" if normalize is None else normalize
    vision_model, projection, processor = _load_vision(vision, layout)
    decoder_model = _load_decoder(decoder, layout, state, source)
    mapper = _mapper(layout, state, source, vision_model, projection, normalize)
    tokenizer = backbones.load_tokenizer(decoder)
    max_tokens = max(1, min(MAX_TOKENS, decoder_model.config.n_positions - layout.prefix_length))
    configure_prefix_generation(decoder_model, tokenizer, max_tokens)
    stop = tokenizer.encode(STOP, add_special_tokens=False)[0]
    decoder_model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]

    frozen_decoder = layout.kind == "transformer"  # ClipCaptionPrefix: GPT-2 frozen; the MLP variant tunes it
    captioner = Captioner(PrefixCaptionModel(vision_model, decoder_model, mapper), None)
    captioner.freeze(vision=True, decoder=frozen_decoder)
    preset = "clipcap" if layout.kind == "transformer" else "clipcap-mlp"
    config = build_config(preset, overrides={"data": "coco", "model": {
        "vision": vision, "decoder": decoder, "mapper": layout.kind, "prefix_length": layout.prefix_length,
        "mapper_layers": layout.layers or 8, "mapper_heads": HEADS, "freeze_decoder": frozen_decoder,
        "image_size": vision_model.config.image_size, "max_caption_tokens": max_tokens}})

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        with write_errors(staging):
            save_captioner(staging, captioner, tokenizer, processor)
            save_config(config, staging / CONFIG_NAME)
            mark_finished(staging, "pretrain", data="unknown (a ClipCap checkpoint, trained outside capalign)",
                          steps=0, converted_from=str(source.resolve()), clipcap={
                              "mapper": layout.kind, "prefix_length": layout.prefix_length,
                              "clip_length": layout.clip_length, "layers": layout.layers, "heads": HEADS,
                              "normalize_prefix": normalize, "gpt2_from": "checkpoint" if layout.has_gpt else decoder})
            install(staging, claim.path, "run")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_model_card(out)
    what = f"{layout.kind} mapper, prefix {layout.prefix_length}" + (
        f", clip length {layout.clip_length}, {layout.layers} layers x {HEADS} heads" if layout.kind == "transformer" else "")
    log.info(f"Converted {source} ({what}; GPT-2 {'from the checkpoint' if layout.has_gpt else 'from ' + decoder}; "
             f"prefix {'normalised' if normalize else 'not normalised'}) → {out}")
    return out
