"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A user mistake (bad option, missing file, bad input): the CLI prints its message on one line
    and exits with status 2. The message must say what was wrong and what to do."""
