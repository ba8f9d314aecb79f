"""Model folders and checkpoints users hand us may be damaged or hostile. `check_folder` looks at a
folder before any library reads it (symlinks out of it, remote code, unreadable JSON, corrupt
safetensors headers, pickles that hold code, absurd generation settings); `loading` turns whatever a
library raises while loading into one InputError line; `check_size` refuses a config that describes a
model far larger than its weights before anything is allocated.

transformers prompts "Do you wish to run the custom code? [y/N]" for a folder whose configs hold an
`auto_map` unless `trust_remote_code` is given: every loader passes `trust_remote_code=False`
(`NO_REMOTE_CODE`), and `check_folder` refuses such folders first, so nothing ever prompts.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from transformers import AutoConfig

from capalign.errors import CapalignError, InputError

NO_REMOTE_CODE = {"trust_remote_code": False}
HINT = "re-run training or pass a valid --model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Generation settings a folder may carry, with the largest value we accept (a model folder saying
# num_beams 10^9 would hang or exhaust memory at the first caption).
GENERATION_INTS = {"max_length": 1 << 16, "max_new_tokens": 1 << 16, "min_length": 1 << 16, "min_new_tokens": 1 << 16,
                   "num_beams": 256, "num_beam_groups": 256, "num_return_sequences": 256, "top_k": 1 << 20,
                   "no_repeat_ngram_size": 1 << 10, "decoder_start_token_id": 1 << 24, "bos_token_id": 1 << 24,
                   "pad_token_id": 1 << 24}
GENERATION_FLOATS = ("temperature", "top_p", "repetition_penalty", "length_penalty", "diversity_penalty")
MODEL_JSON = {"tokenizer.json", "vocab.json", "added_tokens.json", "special_tokens_map.json", "capalign_model.json",
              "contrastive_head.json"}
MAX_LAYERS = 1024  # layer counts beyond this are refused before a model is even built on the meta device
SIZE_SLACK = 4  # a model may be this many times larger than its stored weights (new cross-attention, ties)


def _refuse(folder: Path, reason: str, hint: str, action: str = "cannot load model from") -> InputError:
    return InputError(f"{action} {folder}: {reason}; {hint}")


def _boundary(folder: Path) -> Path:
    """What symlinks may point into: the folder, or for a Hugging Face cache snapshot
    (models--org--name/snapshots/REV, whose files link to ../../blobs) the model's cache folder."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def _symlinks_out(folder: Path, hint: str) -> None:
    boundary = _boundary(folder).resolve()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink() and not path.resolve().is_relative_to(boundary):
                raise _refuse(folder, f"{path.relative_to(folder)} is a symlink to {os.readlink(path)}, outside the "
                                      "folder (refused: a model folder must hold its own files)", hint)


def _has_auto_map(value) -> bool:
    if isinstance(value, dict):
        return "auto_map" in value or any(_has_auto_map(v) for v in value.values())
    return False


def _read_json(path: Path, folder: Path, hint: str):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refuse(folder, f"{path.name} is not valid JSON ({str(exc).splitlines()[0][:80]})", hint) from None


def _check_generation(data, folder: Path, hint: str) -> None:
    if not isinstance(data, dict):
        raise _refuse(folder, "generation_config.json is not a JSON object", hint)
    for key, limit in GENERATION_INTS.items():
        value = data.get(key)
        if value is not None and (type(value) is not int or not 0 <= value <= limit):
            raise _refuse(folder, f"generation_config.json has {key} = {json.dumps(value)[:40]} (expected a whole number "
                                  f"from 0 to {limit})", hint)
    for key in GENERATION_FLOATS:
        value = data.get(key)
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value < 0):
            raise _refuse(folder, f"generation_config.json has {key} = {json.dumps(value)[:40]} (expected a number >= 0)",
                          hint)
    if data.get("do_sample") is not None and type(data["do_sample"]) is not bool:
        raise _refuse(folder, "generation_config.json has a do_sample that is not true/false", hint)


def _check_named_files(name: str, data, folder: Path, hint: str) -> None:
    """Files a config names (a sharded index's weight_map, a tokenizer's `*_file`) must be plain
    names inside the folder: `../` or an absolute path would make the loader read anything."""
    if not isinstance(data, dict):
        return
    named = list(data["weight_map"].values()) if name.endswith(".index.json") and isinstance(data.get("weight_map"), dict) \
        else [v for k, v in data.items() if k.endswith("_file") and v is not None] if name == "tokenizer_config.json" else []
    for value in named:
        if not isinstance(value, str) or Path(value).name != value or value in ("", ".", ".."):
            raise _refuse(folder, f"{name} names the file {json.dumps(value)[:80]}, which is not a plain file name in the "
                                  "folder (refused)", hint)


def _check_layers(data, folder: Path, hint: str) -> None:
    """Layer counts anywhere in config.json (nested encoder/decoder configs too) must be sane."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if isinstance(value, dict):
            _check_layers(value, folder, hint)
        elif ("layers" in key or key == "n_layer") and type(value) is int and not 0 <= value <= MAX_LAYERS:
            raise _refuse(folder, f"config.json has {key} = {value} (at most {MAX_LAYERS})", hint)


def safetensors_shapes(path: Path, folder: Path, hint: str = HINT,
                       action: str = "cannot load model from") -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from a safetensors header (the safetensors library validates the header:
    its length, JSON, offsets and sizes against the file); a damaged file is an InputError."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except FileNotFoundError:
        raise _refuse(folder, f"{path.name} is missing", hint, action) from None
    except Exception as exc:  # SafetensorError and OSError carry the reason (HeaderTooLarge, InvalidHeader, ...)
        raise _refuse(folder, f"{path.name} is damaged ({str(exc).splitlines()[0][:100]})", hint, action) from None


def check_pickle(path: Path, folder: Path, hint: str = HINT, allowed: frozenset[str] = frozenset(),
                 action: str = "cannot load model from") -> None:
    """A torch pickle may only hold tensors (and the `allowed` globals): list the globals it would
    import, without loading it; anything else is an InputError naming the file."""
    try:
        unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in allowed]
    except Exception as exc:  # not a torch zip file (legacy pickle, garbage): torch.load(weights_only) would fail too
        raise _refuse(folder, f"{path.name} is not a readable torch file ({str(exc).splitlines()[0][:80]})",
                      hint, action) from None
    if unsafe:
        raise _refuse(folder, f"{path.name} is a pickle that imports {', '.join(unsafe[:3])} (code, not plain tensors; "
                              "refused)", hint, action)


def _read_by_loaders(name: str) -> bool:
    """Whether transformers or capalign's model loading reads this JSON file of a model folder."""
    return name.endswith(("config.json", ".index.json")) or name in MODEL_JSON


def check_folder(folder: str | Path, hint: str = HINT) -> None:
    """Refuse, with one InputError line naming the file, a model folder that links out of itself, asks
    to run its own code, holds unreadable JSON, damaged safetensors, code-carrying pickles or absurd
    generation settings."""
    folder = Path(folder)
    _symlinks_out(folder, hint)
    for path in sorted(folder.glob("*.json")):
        try:
            data = _read_json(path, folder, hint)
        except CapalignError:
            if _read_by_loaders(path.name):
                raise
            continue  # a record of capalign's (run.json, ...) that no loader reads
        if _has_auto_map(data):
            raise _refuse(folder, f"{path.name} asks to run the folder's own Python code (auto_map); capalign never "
                                  "runs code from model folders", hint)
        if path.name == "generation_config.json":
            _check_generation(data, folder, hint)
        _check_named_files(path.name, data, folder, hint)
        if path.name == "config.json":
            _check_layers(data, folder, hint)
    for path in sorted(folder.glob("*.safetensors")):
        safetensors_shapes(path, folder, hint)
    for path in sorted(folder.iterdir()):
        if path.suffix in PICKLE_SUFFIXES and path.is_file():
            check_pickle(path, folder, hint)


def require(folder: str | Path, *names: str, hint: str = HINT) -> None:
    """Each of `names` (a file, or alternatives joined by "|") must be in `folder`."""
    folder = Path(folder)
    for name in names:
        if not any((folder / option).is_file() for option in name.split("|")):
            raise _refuse(folder, f"{name.replace('|', ' or ')} is missing", hint)


def _stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) + \
        sum(p.stat().st_size for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)


def check_size(folder: str | Path, build: Callable[[], torch.nn.Module], hint: str = HINT) -> None:
    """Build the model `build` describes on the meta device (no memory) and refuse it when it is far
    larger than the weights stored in `folder`, or when a stored tensor's shape differs from the
    model's: transformers would otherwise allocate the whole model (a config asking for terabytes)
    before it notices."""
    folder = Path(folder)
    with loading(folder, hint), torch.device("meta"):
        model = build()
    wanted = sum(p.numel() * p.element_size() for p in model.parameters())
    stored = _stored_bytes(folder)
    if wanted > SIZE_SLACK * stored + (64 << 20):
        raise _refuse(folder, f"config.json describes a model of {wanted / 2**30:.1f} GiB but its weights hold "
                              f"{stored / 2**20:.1f} MiB", hint)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for path in sorted(folder.glob("*.safetensors")):
        for key, shape in safetensors_shapes(path, folder, hint).items():
            if key in expected and expected[key] != shape:
                raise _refuse(folder, f"{path.name}: tensor {key} has shape {list(shape)} but config.json says "
                                      f"{list(expected[key])}", hint)


def load_pretrained(cls, folder: str | Path, hint: str = HINT):
    """`cls.from_pretrained(folder)` for a part capalign saved itself (a transformers model class or
    an Auto class): the folder checked, its config checked against its weights before anything is
    allocated, and every weight required (with tensors missing transformers would fill in random ones)."""
    folder = Path(folder)
    check_folder(folder, hint)
    with loading(folder, hint, what="config.json"):
        config = AutoConfig.from_pretrained(folder, local_files_only=True, **NO_REMOTE_CODE)
    build = (lambda: cls.from_config(config, **NO_REMOTE_CODE)) if cls.__name__.startswith("Auto") else (lambda: cls(config))
    check_size(folder, build, hint)
    with loading(folder, hint, what="weights"):
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **NO_REMOTE_CODE)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise _refuse(folder, f"its weights lack {len(missing)} tensors ({missing[0]}, ...)", hint)
    return model


@contextmanager
def loading(folder: str | Path, hint: str = HINT, action: str = "cannot load model from",
            what: str | None = None) -> Iterator[None]:
    """Around library calls that read a model folder: what they raise (OSError, ValueError, JSON and
    safetensors errors, UnpicklingError, KeyError, RuntimeError on a size mismatch, tokenizers'
    plain Exceptions) becomes one InputError line naming the folder, the file(s) read (`what`) and
    what to do."""
    try:
        yield
    except CapalignError:
        raise
    except MemoryError:
        raise _refuse(Path(folder), "it needs more memory than this machine has", hint, action) from None
    except Exception as exc:  # the libraries raise many unrelated types; every one means "this folder is unusable"
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        where = f"{what}: " if what else ""
        raise _refuse(Path(folder), f"{where}{type(exc).__name__}: {first[:200]}", hint, action) from None
