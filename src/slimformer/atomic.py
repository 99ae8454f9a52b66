"""Write a folder completely or not at all: build it beside the target, rename when done."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ConfigValueError


def _prepare(target: str | os.PathLike, overwrite: bool) -> Path:
    target = Path(target)
    if target.exists() and not overwrite:
        raise ConfigValueError(f"{target} already exists; choose another --out or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """keep_existing: a cache entry that another process finished while this one was building it
    is kept (and this copy dropped), so a reader of the first is never left without its files."""
    target = _prepare(target, overwrite or keep_existing)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    if keep_existing and target.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block ends without error."""
    target = _prepare(target, overwrite)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, target)
