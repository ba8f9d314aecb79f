"""The settings schema: a config field's help, choices and bounds live in its metadata (`setting`),
its type in its annotation, and one validator (`check`, run by every settings dataclass's
`__post_init__`) refuses a value outside them with one sentence naming the field, the value and
what is allowed. The command-line flags (capalign.cli.flags) are generated from the same fields.
Written here rather than taken from pydantic: the dataclasses already carry every bound in their
metadata, and a second declaration style would cost import time against the 0.5 s `--help`."""

from __future__ import annotations

import dataclasses
import difflib
import math

from capalign.errors import ConfigError

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_BOUNDS = ("above", "at_least", "below", "at_most")


def setting(default, help: str, *, choices: tuple | None = None, above=None, at_least=None, below=None,
            at_most=None, flag: str | None = None, engine: bool = False):
    """A settings field: `default` (a dataclass type: a nested section), its `help`, the `choices` or
    bounds (`above`/`at_least`/`below`/`at_most`) a value must keep to, `flag` (a bool's
    `--on/--off` pair when not `--name/--no-name`) and `engine` (a train setting the training engine
    reads, so stage 2 runs with it too and `capalign align` has its flag)."""
    metadata = {"help": help, "choices": choices, "flag": flag, "engine": engine,
                **{name: value for name, value in zip(_BOUNDS, (above, at_least, below, at_most))}}
    if isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def restage(**defaults):
    """Class decorator (applied before @dataclass) giving settings inherited from a shared base this
    stage's own defaults, keeping the one declaration's type and help (TRL's DPOConfig re-declares
    the TrainingArguments it changes; here only the default is written again)."""

    def apply(cls):
        inherited = {f.name: f for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)}
        for name, default in defaults.items():
            cls.__annotations__[name] = inherited[name].type
            setattr(cls, name, dataclasses.field(default=default, metadata=inherited[name].metadata))
        return cls

    return apply


def kind(f: dataclasses.Field) -> tuple[type | None, bool]:
    """(the scalar type of a settings field, whether it may be None); (None, False) for a section."""
    parts = [p.strip() for p in str(f.type).split("|")]
    scalar = [_TYPES[p] for p in parts if p in _TYPES]
    return (scalar[0] if scalar else None), "None" in parts


def describe(f: dataclasses.Field, help: str | None = None) -> str:
    """A field's help (or `help`) as --help shows it, with its choices when the help does not list them."""
    text, choices = help or f.metadata["help"], f.metadata.get("choices")
    if choices and not all(str(c) in text for c in choices):
        text += f" One of: {', '.join(map(str, choices))}."
    return text


def allowed(f: dataclasses.Field) -> str:
    """What a field takes, in words: `a number above 0`, `between 1 and 100`, `one of dpo, scst`, `true or false`."""
    base, optional = kind(f)
    meta = f.metadata
    if meta.get("choices"):
        text = "one of " + ", ".join(map(str, meta["choices"]))
    elif base is bool:
        text = "true or false"
    elif base is str:
        text = "text"
    else:
        limits = [f"{name.replace('_', ' ')} {meta[name]}" for name in _BOUNDS if meta.get(name) is not None]
        low, high = meta.get("at_least"), meta.get("at_most")
        closed = base is int and low is not None and len(limits) == 1 + (high is not None)  # no above / below
        if closed and low == 1 and high is None:
            text = "positive: a whole number from 1 up"
        elif closed and high is not None:
            text = f"between {low} and {high}"
        elif closed:
            text = f"a whole number of at least {low}"
        else:
            text = ("a whole number" if base is int else "a number" if limits else "a finite number") \
                + (" " + " and ".join(limits) if limits else "")
    return text + (", or null" if optional else "")


def _fits(f: dataclasses.Field, value) -> bool:
    base, optional = kind(f)
    meta = f.metadata
    if value is None:
        return optional
    if base in (int, float):
        # bool is an int subclass, and a YAML `yes` must not pass as 1
        if isinstance(value, bool) or not isinstance(value, (int, float) if base is float else int):
            return False
        if base is float and not math.isfinite(value):
            return False
        bounds = [(meta.get("above"), lambda v, b: v > b), (meta.get("at_least"), lambda v, b: v >= b),
                  (meta.get("below"), lambda v, b: v < b), (meta.get("at_most"), lambda v, b: v <= b)]
        return all(bound is None or ok(value, bound) for bound, ok in bounds)
    if not isinstance(value, base):
        return False
    return not meta.get("choices") or value in meta["choices"]


def shown(value) -> str:
    """A value as a message quotes it: strings quoted, long ones cut, lists and mappings by kind."""
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'mapping'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag named after a field (`num_beams` → `--num-beams`)."""
    return "--" + f.name.replace("_", "-")


def check(settings, section: str = "", *, as_flags: bool = False) -> None:
    """Check every scalar field of the dataclass `settings` against its type, choices and bounds;
    ints given for floats become floats. `section` prefixes the field in the message (`train.`);
    `as_flags` names it by its flag instead (`--num-beams`), for a command's options, not config keys."""
    for f in dataclasses.fields(settings):
        base, _ = kind(f)
        if base is None:
            continue
        value = getattr(settings, f.name)
        if value is False and base is str and "no" in (f.metadata.get("choices") or ()):
            value = "no"  # YAML 1.1 reads a bare `no` (mixed_precision: no) as false
        if not _fits(f, value):
            name = flag_name(f) if as_flags else section + f.name
            raise ConfigError(f"{name} must be {allowed(f)} (got {shown(value)}).")
        setattr(settings, f.name, float(value) if base is float and value is not None else value)


# Hugging Face TrainingArguments names a user may bring from transformers or TRL → ours.
_HF_NAMES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
             "gradient_accumulation_steps": "grad_accum", "max_grad_norm": "grad_clip", "logging_steps": "log_every",
             "eval_steps": "eval_every", "save_steps": "checkpoint_every", "save_total_limit": "keep_checkpoints"}


def unknown_key(key, where: str, names) -> ConfigError:
    """The error for a key no settings section has, suggesting the closest name."""
    known = _HF_NAMES.get(str(key))
    close = [known] if known in names else difflib.get_close_matches(str(key), list(names), n=1)
    hint = f"did you mean '{where}{close[0]}'? " if close else ""
    return ConfigError(f"Unknown config key '{where}{key}'; {hint}valid keys: {', '.join(names)}.")
