"""One device policy for every command: `--device auto|cpu|cuda|cuda:N|mps`, and for inference
`--dtype auto|float32|bfloat16|float16`.

auto (the default) is the accelerator when one is present (CUDA, then Apple MPS), else the CPU; a
device that is not there is a one-line user error. Under `torchrun` / `accelerate launch` each process
uses its own local GPU (LOCAL_RANK). The auto dtype is the precision the run was trained in
(`train.mixed_precision`) on an accelerator, and float32 on the CPU."""

from __future__ import annotations

import os

import torch

from capalign.errors import ConfigError

CHOICES = "auto, cpu, cuda, cuda:N or mps"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRAINED_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # train.mixed_precision -> inference dtype


def resolve_device(spec: str | None = None) -> torch.device:
    """The torch device `spec` names, checked to exist here."""
    name = (spec or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r} is not a device; use {CHOICES}.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {spec}: no CUDA GPU is available on this machine; use --device cpu (or auto).")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {spec}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {spec}: Apple MPS is not available on this machine; use --device cpu (or auto).")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {spec!r} is not supported; use {CHOICES}.")
    return device


def resolve_dtype(spec: str | None, device: torch.device, mixed_precision: str | None = None) -> torch.dtype:
    """The inference dtype `spec` names; auto: the run's training precision (`mixed_precision`) on
    an accelerator, float32 on the CPU."""
    name = (spec or "auto").strip().lower()
    if name == "auto":
        name = TRAINED_DTYPES.get(mixed_precision or "no", "float32") if device.type != "cpu" else "float32"
    if name not in DTYPES:
        raise ConfigError(f"--dtype {spec!r} is not a dtype; use auto, float32, bfloat16 or float16.")
    return DTYPES[name]


def check_precision(mixed_precision: str, spec: str | None = None) -> None:
    """Refuse a `train.mixed_precision` the device `spec` names cannot train in (fp16 autocast needs a
    CUDA GPU; bf16 a CPU, an MPS device or a CUDA GPU that has it), so that a run never records a
    precision it did not train in; called at a stage's start, before anything is written."""
    device = resolve_device(spec)
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError(f"train.mixed_precision fp16 needs a CUDA GPU, and this run trains on the CPU "
                          f"(--device {spec or 'auto'}); use --mixed-precision no (or bf16).")
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.mixed_precision bf16: this GPU ({torch.cuda.get_device_name(device)}) does not "
                          "support bfloat16; use --mixed-precision fp16 or no.")
