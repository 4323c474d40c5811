"""Output files written all together or not at all.

A run creates its output folder only when it has something to write, writes every file under a
temporary name beside its final one, then renames them all with Ctrl-C and SIGTERM held back: an
interrupted or failing run leaves the previous complete set of files, or none, never a mix of two
runs, and no folder it created for nothing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ._errors import UsageError

Writer = Callable[[Path], object]
"""Writes one file at the path it is given (a temporary name with the final suffix)."""

_HELD = {signal.SIGINT, signal.SIGTERM}


def check_writable(out: Path, option: str = "--out") -> None:
    """A usage error unless ``out`` is, or can be created as, a folder this user can write.

    Creates nothing: the folder is made when the files are written.
    """
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{str(existing)!r} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"Permission denied on {str(existing)!r}"
    if problem is not None:
        raise UsageError(f"cannot write to {option} {str(out)!r} ({problem}): choose a writable "
                         "folder")


def write_files(out: Path, writers: Mapping[str, Writer]) -> None:
    """Write the files ``{name: writer}`` into the folder ``out``, all of them or none.

    Each file is written to a temporary name, then all are renamed into place together.
    """
    created = _make_folder(out)
    staged: list[tuple[Path, Path]] = []
    done = False
    try:
        for name, write in writers.items():
            final = out / name
            temporary = out / f".{final.stem}.partial-{os.getpid()}{final.suffix}"
            staged.append((temporary, final))
            write(temporary)
        with _signals_held():
            for temporary, final in staged:
                os.replace(temporary, final)
        done = True
    except OSError as e:
        raise UsageError(f"cannot write to {str(out)!r} ({e.strerror or e})") from e
    finally:
        if not done:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            for folder in created:  # innermost first; only those this run made, if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break


def _make_folder(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; returns those created, innermost first."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to --out {str(out)!r} ({e.strerror or e}): choose a "
                         "writable folder") from e
    return missing


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back (delivered on exit) where the platform can."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: renames stay unguarded
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
