"""capalign's exceptions. The library raises these (never exits, never prints); `capalign.cli`
turns any CapalignError into one stderr line and exit status 2. Each message says what was wrong
and what to do, so the Python API and the command line tell the user the same thing."""


class CapalignError(Exception):
    """Base: capalign cannot do what was asked with what it was given."""


class ConfigError(CapalignError, ValueError):
    """A setting (option, YAML key, preset, method argument) with a value no run can use."""


class InputError(CapalignError, ValueError):
    """A file, folder, dataset, model or checkpoint handed to capalign is unusable: damaged, hostile,
    of the wrong kind or the wrong size."""


class MissingError(CapalignError, FileNotFoundError):
    """Something named (a file, folder, model, dataset, run, metric's backbone) is not there."""


class OutputError(CapalignError, FileExistsError):
    """An output place cannot be written without losing what it holds (or is not writable at all)."""

