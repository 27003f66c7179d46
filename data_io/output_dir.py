"""Output folders written atomically: staged in a sibling temp folder, renamed into place on success.

A failed run leaves nothing in `--out`; a folder holding a different run is replaced only with
`force=True`; a folder that holds files we did not write is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from comical.data_io.errors import InputError

RUN_FILE = "run.json"
# Keys of run.json that say how a run went, not what it is: ignored when deciding whether `out` holds the same run.
_STATE_KEYS = ("state", "error")


def _what_ran(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in json.loads(json.dumps(run)).items() if k not in _STATE_KEYS}


def mark_run(out: Path, run: dict[str, Any], state: str, error: BaseException | None = None) -> None:
    """Record a long run's state in `out/run.json`: running, failed (with the error's first line), interrupted or done.

    A folder whose run.json does not say `done` is not a finished run, whatever else it holds.
    """
    record = {**run, "state": state}
    if error is not None:
        record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    write_atomic(Path(out) / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def check_output_dir(out: str | Path, run: dict[str, Any], *, force: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Fail before any compute if `out` cannot take this run's outputs.

    `run` describes the run (command and resolved config); an existing `out` whose `run.json` says
    the same run is simply rewritten, a different run needs `force`, a folder we did not write
    (no `run.json`, not empty) is refused, and `out` may not overlap (be, contain or sit inside) one of the `inputs`.
    """
    out = Path(out).resolve()
    for given in inputs:
        given = Path(given).resolve()
        if out == given or out in given.parents or given in out.parents:
            raise InputError(f"--out {out}: overlaps the input {given}; choose an output folder outside it")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        previous = out / RUN_FILE
        if not previous.is_file():
            raise InputError(f"--out {out}: folder is not empty and was not written by comical; choose an empty or new folder")
        try:
            same = _what_ran(json.loads(previous.read_text())) == _what_ran(run)
        except json.JSONDecodeError:
            same = False
        if not same and not force:
            raise InputError(f"--out {out}: holds a different run ({previous}); pass --force to replace it")
    return out


@contextlib.contextmanager
def staged_output_dir(out: str | Path, run: dict[str, Any]) -> Iterator[Path]:
    """Yield a temp folder beside `out`; on success write `run.json` and swap it in for `out`.

    Call `check_output_dir` first: this replaces a previous comical run in `out` unconditionally.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        (stage / RUN_FILE).write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old)
        else:
            os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `out`; when the block ends without error it replaces `out` (a folder of inputs a
    command makes: readers never see half of one), otherwise it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file under a temp name in its folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
