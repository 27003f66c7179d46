"""The one exception for bad user input: the CLI prints it as one line and exits with status 2."""


class InputError(ValueError):
    """Input that cannot be used: the message names the file, the row or column, and what was expected."""
