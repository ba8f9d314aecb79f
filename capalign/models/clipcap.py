"""Checkpoints of ClipCap's own repository (rmokady/CLIP_prefix_caption): `torch.save` of a
`ClipCaptionModel` / `ClipCaptionPrefix` state dict, read without unpickling code and mapped onto
capalign's PrefixMapper and a GPT-2.

The key layout (ClipCap's train.py):

- `gpt.*`: its GPT2LMHeadModel. `ClipCaptionPrefix` (the transformer mapper, GPT-2 frozen) saves its
  GPT-2 too; a file holding only `clip_project.*` takes GPT-2 from `--decoder`.
- MLP mapper: `clip_project.model.0` (image → P·D/2), Tanh, `clip_project.model.2` (→ P·D).
- Transformer mapper: `clip_project.linear` (image → C·D: C "clip" tokens), `clip_project.prefix_const`
  (P, D), and per layer `clip_project.transformer.layers.N.`{`norm1`, `attn.to_queries`,
  `attn.to_keys_values` (keys then values), `attn.project`, `norm2`, `mlp.fc1`, `mlp.fc2`}: pre-norm,
  8 heads (fixed in ClipCap's code, not in the file), no query/key/value bias, ReLU, feed-forward 2·D.

P (prefix length), C (clip length), the layer count, D (GPT-2's width) and the image embedding's
width all come from the tensors' names and shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from capalign.errors import InputError

GPT = "gpt."
PROJECT = "clip_project."
HEADS = 8  # ClipCap's TransformerMapper hard-codes 8 heads
_LAYER = re.compile(r"clip_project\.transformer\.layers\.(\d+)\.")
_GPT_LAYER = re.compile(r"gpt\.transformer\.h\.(\d+)\.")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")  # torch's weights_only refusal of a class/function
_LAYER_PARTS = {  # ClipCap's name within a layer → nn.TransformerEncoderLayer's (attention handled apart)
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attn.project.weight": "self_attn.out_proj.weight", "attn.project.bias": "self_attn.out_proj.bias",
    "mlp.fc1.weight": "linear1.weight", "mlp.fc1.bias": "linear1.bias",
    "mlp.fc2.weight": "linear2.weight", "mlp.fc2.bias": "linear2.bias",
}


@dataclass
class ClipCapLayout:
    """What a ClipCap state dict holds, inferred from its tensors."""

    kind: str  # "mlp" | "transformer"
    image_dim: int  # width of the CLIP image embedding it maps
    text_dim: int  # GPT-2's n_embd
    prefix_length: int
    clip_length: int | None = None  # transformer: tokens made from the image embedding
    layers: int = 0  # transformer layers
    qkv_bias: bool = False
    gpt_layers: int | None = None  # None: no gpt.* tensors in the file
    vocab_size: int | None = None
    positions: int | None = None

    @property
    def has_gpt(self) -> bool:
        return self.gpt_layers is not None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ClipCap checkpoint: `torch.load(weights_only=True)` (a pickle that needs any
    other Python object is refused, never run) or a safetensors file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # deferred: only for safetensors checkpoints

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for broken files
        needs = _UNSAFE_GLOBAL.search(str(exc))
        if needs:
            raise InputError(f"{path} holds Python objects beyond tensors (it needs {needs.group(1)}); capalign loads "
                             "checkpoints with weights_only=True and will not unpickle it. Save the state dict alone "
                             "(torch.save(model.state_dict(), ...)).") from None
        raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or not a torch.save file: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}).") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; "
                         "pass the file ClipCap's train.py saves (torch.save(model.state_dict(), ...)).")
    return state


def _unknown(path: Path, why: str) -> InputError:
    return InputError(f"{path} is not a ClipCap checkpoint capalign can convert: {why}.")


def infer_layout(state: dict[str, torch.Tensor], path: Path, fallback_width: int) -> ClipCapLayout:
    """Mapper kind and sizes from the tensors' names and shapes; `fallback_width` (the decoder's
    n_embd) is used only by an MLP mapper saved without its GPT-2."""
    keys = set(state)
    if not any(k.startswith(PROJECT) for k in keys):
        raise _unknown(path, "it has no clip_project.* tensors (ClipCap's mapper)")
    stray = sorted(k for k in keys if not k.startswith((PROJECT, GPT)))
    if stray:
        raise _unknown(path, f"unexpected tensor {stray[0]} (ClipCap saves only gpt.* and clip_project.*)")
    gpt = _gpt_sizes(state, path)
    width = gpt[1] if gpt else fallback_width
    if "clip_project.model.0.weight" in keys:
        layout = _mlp_layout(state, path, width)
    elif "clip_project.prefix_const" in keys:
        layout = _transformer_layout(state, path)
    elif "clip_project.weight" in keys:
        raise _unknown(path, "its mapper is a single Linear layer (predict.py's prefix_length > 10 variant), "
                             "which capalign's prefix mapper does not have")
    else:
        raise _unknown(path, "its clip_project.* tensors are neither ClipCap's MLP nor its transformer mapper")
    if gpt:
        layout.vocab_size, width, layout.gpt_layers, layout.positions = gpt
        if width != layout.text_dim:
            raise _unknown(path, f"its mapper makes {layout.text_dim}-wide prefix embeddings but its GPT-2 is {width} wide")
    return layout


def _gpt_sizes(state, path: Path) -> tuple[int, int, int, int] | None:
    """(vocabulary, width, layers, positions) of the file's GPT-2, or None when it has none."""
    if not any(k.startswith(GPT) for k in state):
        return None
    wte, wpe = state.get("gpt.transformer.wte.weight"), state.get("gpt.transformer.wpe.weight")
    if wte is None or wpe is None or wte.dim() != 2 or wpe.dim() != 2:
        raise _unknown(path, "its gpt.* tensors are not a GPT-2 (no gpt.transformer.wte / wpe)")
    layers = {int(m.group(1)) for k in state if (m := _GPT_LAYER.match(k))}
    return wte.shape[0], wte.shape[1], max(layers, default=-1) + 1, wpe.shape[0]


def _shape(state, key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise _unknown(path, f"{key} is missing")
    return tuple(state[key].shape)


def _mlp_layout(state, path: Path, width: int) -> ClipCapLayout:
    hidden, image_dim = _shape(state, "clip_project.model.0.weight", path)
    out, hidden2 = _shape(state, "clip_project.model.2.weight", path)
    if hidden2 != hidden or out % width or hidden != out // 2:
        raise _unknown(path, f"MLP mapper shapes ({hidden}x{image_dim}, {out}x{hidden2}) do not fit a {width}-wide GPT-2")
    expected = {"clip_project.model.0.weight", "clip_project.model.0.bias", "clip_project.model.2.weight", "clip_project.model.2.bias"}
    extra = sorted(k for k in state if k.startswith(PROJECT) and k not in expected)
    if extra:
        raise _unknown(path, f"unexpected mapper tensor {extra[0]}")
    return ClipCapLayout("mlp", image_dim, width, out // width)


def _transformer_layout(state, path: Path) -> ClipCapLayout:
    prefix_length, width = _shape(state, "clip_project.prefix_const", path)
    rows, image_dim = _shape(state, "clip_project.linear.weight", path)
    if rows % width:
        raise _unknown(path, f"clip_project.linear makes {rows} values, not a whole number of {width}-wide tokens")
    if width % HEADS:
        raise _unknown(path, f"its width {width} does not split into ClipCap's {HEADS} heads")
    layers = max((int(m.group(1)) for k in state if (m := _LAYER.match(k))), default=-1) + 1
    for i in range(layers):
        base = f"clip_project.transformer.layers.{i}."
        if _shape(state, base + "mlp.fc1.weight", path) != (2 * width, width):
            raise _unknown(path, f"{base}mlp.fc1 is not {2 * width}x{width} (ClipCap's feed-forward is twice the width)")
        if _shape(state, base + "attn.to_keys_values.weight", path) != (2 * width, width):
            raise _unknown(path, f"{base}attn.to_keys_values is not {2 * width}x{width} (a self-attention mapper)")
    qkv_bias = "clip_project.transformer.layers.0.attn.to_queries.bias" in state
    return ClipCapLayout("transformer", image_dim, width, prefix_length, clip_length=rows // width, layers=layers,
                         qkv_bias=qkv_bias)


def mapper_state(state: dict[str, torch.Tensor], layout: ClipCapLayout, path: Path) -> dict[str, torch.Tensor]:
    """The ClipCap mapper's tensors under capalign PrefixMapper's names (without `image_projection`)."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise _unknown(path, f"{key} is missing")
        used.add(key)
        return state[key]

    if layout.kind == "mlp":
        mapped = {f"net.{i}.{p}": take(f"clip_project.model.{i}.{p}") for i in (0, 2) for p in ("weight", "bias")}
    else:
        mapped = {"project.weight": take("clip_project.linear.weight"), "project.bias": take("clip_project.linear.bias"),
                  "constants": take("clip_project.prefix_const")}
        for i in range(layout.layers):
            src, dst = f"clip_project.transformer.layers.{i}.", f"transformer.layers.{i}."
            for ours, theirs in ((src + k, dst + v) for k, v in _LAYER_PARTS.items()):
                mapped[theirs] = take(ours)
            # nn.MultiheadAttention packs query, key and value rows in one matrix, in that order
            mapped[dst + "self_attn.in_proj_weight"] = torch.cat(
                [take(src + "attn.to_queries.weight"), take(src + "attn.to_keys_values.weight")])
            if layout.qkv_bias:
                mapped[dst + "self_attn.in_proj_bias"] = torch.cat(
                    [take(src + "attn.to_queries.bias"), take(src + "attn.to_keys_values.bias")])
    extra = sorted(k for k in state if k.startswith(PROJECT) and k not in used)
    if extra:
        raise _unknown(path, f"unexpected mapper tensor {extra[0]}")
    return mapped


def gpt_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's GPT-2 tensors under GPT2LMHeadModel's names."""
    return {k[len(GPT):]: v for k, v in state.items() if k.startswith(GPT)}
