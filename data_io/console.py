"""A quiet console: a long command's own lines on the console, everything else (Ray's worker logs, library
warnings, progress bars) in a log file in its output folder; `--verbose` shows both."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_CONSOLE: list = []  # the real console of the outermost `logged_console` (nested ones print there too)


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def fileno(self) -> int:
        """The log's descriptor: what writes below Python (Ray's faulthandler.enable on ray.init) goes to the log."""
        return self.streams[0].fileno()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def logged_console(path: Path, *, verbose: bool = False) -> Iterator[Callable[[str], None]]:
    """Within: stdout and stderr go to `path` (appended), and to the console too with `verbose`.

    Yields `say(line)`, which prints a line on the console and in the log.
    """
    console = _CONSOLE[0] if _CONSOLE else sys.stdout
    _CONSOLE.append(console)
    lock = threading.Lock()
    try:
        with open(path, "a", buffering=1) as log:
            stream = _Tee(log, console) if verbose else log

            def say(line: str) -> None:
                with lock:
                    print(line, file=console, flush=True)
                    print(line, file=log, flush=True)

            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield say
    finally:
        _CONSOLE.pop()
