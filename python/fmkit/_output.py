"""Writing outputs whole, for every fmkit writer of folders and files (pools, uid files,
checkpoints, evaluation tasks, calibration results, benchmark JSON).

A writer refuses a target that already holds data unless asked to overwrite: writing new files
into an old pool would otherwise leave the old shards beside the new ones, and every later
reader would see both. With overwrite, the new data is written next to the target and swapped
in by rename once complete, so a failure part-way leaves the old data untouched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


class OutputExistsError(FileExistsError):
    """The target holds data and overwriting was not asked for."""


def check_output(path, overwrite: bool, what: str, hint: str = "overwrite=True") -> None:
    """Raises OutputExistsError when `path` is a non-empty folder or an existing file and not
    `overwrite`; `what` names the argument (e.g. "out_dir" or "--out") and `hint` the way out."""
    target = Path(path)
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    if target.is_dir():
        entries = sorted(p.name for p in target.iterdir())
        if not entries:
            return
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputExistsError(f"{what}: {str(target)!r} is not empty ({len(entries)} entries: {shown}); "
                                f"pass {hint} to replace it")
    raise OutputExistsError(f"{what}: {str(target)!r} already exists; pass {hint} to replace it")


def _sibling(target: Path, tag: str) -> Path:
    # Same folder as the target, so the final rename stays on one file system (atomic).
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{target.suffix}")


@contextlib.contextmanager
def replace_dir(path, *, overwrite: bool = False, what: str = "out_dir",
                hint: str = "overwrite=True") -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; on success it becomes `path` (replacing
    what was there), on failure it is deleted and `path` is left as it was."""
    target = Path(path)
    check_output(target, overwrite, what, hint)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{what}: {str(target)!r} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "partial")
    os.mkdir(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = _sibling(target, "old")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def replace_file(path, *, overwrite: bool = False, what: str = "path",
                 hint: str = "overwrite=True") -> Iterator[Path]:
    """Yields a temporary path beside `path` (same suffix); on success it replaces `path` in
    one rename, on failure it is removed and `path` is left as it was."""
    target = Path(path)
    check_output(target, overwrite, what, hint)
    if target.is_dir():
        raise OutputExistsError(f"{what}: {str(target)!r} is a folder, expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "partial")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
