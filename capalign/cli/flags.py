"""Command-line options generated from the settings schema: one typer.Option per dataclass field,
its flag named after the field (`max_steps` → `--max-steps`), its help and choices from the field's
metadata (capalign.schema.setting). A command takes its generated options as `**given`: `with_flags`
builds the signature Typer reads (inspect.Signature), so a new setting is one line in one dataclass."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Optional

import typer

from capalign.schema import describe, flag_name, kind


# --help groups each section's flags in a panel of its own (pretrain alone has over 60).
PANELS = {"model": "Model (model.*)", "train": "Training (train.*)", "align": "Stage 2 (align.*)",
          "decoding": "Decoding"}


@dataclass(frozen=True)
class Flag:
    """One generated option: the setting it sets (`section`, `field`), its parameter name and flags."""

    section: str  # "train", "model", "" (RunConfig.data), or a group's name ("decoding": not config)
    field: dataclasses.Field
    name: str
    flags: tuple[str, ...]

    @property
    def key(self) -> str:
        """The dotted config key (`train.lr`)."""
        return f"{self.section}.{self.field.name}" if self.section else self.field.name

    def parameter(self, defaults: bool, help: str) -> inspect.Parameter:
        base, optional = kind(self.field)
        default = self.field.default if defaults else None
        option = typer.Option(default, *self.flags, help=help, show_default=defaults, rich_help_panel=PANELS.get(self.section))
        annotation = Optional[base] if (optional or not defaults) else base
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def flags_of(cls, section: str, *, only=None) -> list[Flag]:
    """The flags of `cls`'s scalar fields (those `only` keeps), named after them."""
    out = []
    for f in dataclasses.fields(cls):
        if kind(f)[0] is None or (only is not None and not only(f)):
            continue
        long = flag_name(f)
        spelled = f.metadata.get("flag") or (f"{long}/--no-{long[2:]}" if kind(f)[0] is bool else long)
        out.append(Flag(section, f, f.name, tuple(spelled.split())))
    return out


def with_flags(*groups: list[Flag], defaults: bool = False, help_suffix: dict[str, str] | None = None,
               helps: dict[str, str] | None = None):
    """Decorator: the command's own parameters, then one keyword-only option per flag in `groups`
    (default None, so only what the user gave overrides; or, with `defaults`, the field's default).
    `help_suffix` adds to the help of a section's flags, `helps` replaces a field's help for this
    command. The command receives the generated ones in `**given`."""

    def help_of(flag: Flag) -> str:
        return describe(flag.field, (helps or {}).get(flag.field.name)) + (help_suffix or {}).get(flag.section, "")

    def apply(command):
        own = [p for p in inspect.signature(command).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = [flag.parameter(defaults, help_of(flag)) for group in groups for flag in group]
        command.__signature__ = inspect.Signature(own + generated)
        command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in generated}}
        return command

    return apply


def overrides(groups: list[list[Flag]], given: dict) -> dict:
    """Nested config overrides (`{"train": {"lr": 0.1}}`) from the options the user gave (not None)."""
    out: dict = {}
    for flag in (flag for group in groups for flag in group):
        value = given.get(flag.name)
        if value is None:
            continue
        if flag.section:
            out.setdefault(flag.section, {})[flag.field.name] = value
        else:
            out[flag.field.name] = value
    return out


def names(groups: list[list[Flag]]) -> dict[str, str]:
    """Dotted config key → the flag that sets it (`train.lr` → `--lr`), for naming refused values."""
    return {flag.key: flag.flags[0].split("/")[0] for group in groups for flag in group}
