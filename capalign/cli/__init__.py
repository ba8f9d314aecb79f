"""The `capalign` command line: one module per command, put together in capalign.cli.main."""

from capalign.cli.main import COMMANDS, app, main

__all__ = ["COMMANDS", "app", "main"]
