"""The two exceptions the CLI prints as one line: bad user input (exit status 2), and a run that failed for a
reason it can state (exit status 1)."""


class InputError(ValueError):
    """Input that cannot be used: the message names the file, the row or column, and what was expected."""


class RunFailed(RuntimeError):
    """A run that could not finish, such as one that made no progress (distributed/watchdog.py): one line why."""
