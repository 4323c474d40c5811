"""Output files written all together or not at all.

A run creates its output folder only when it has something to write, writes every file under a
temporary name beside its final one, then renames them all with Ctrl-C and SIGTERM held back: an
interrupted or failing run leaves the previous complete set of files, or none, never a mix of two
runs, and no folder it created for nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sigprop._files import Writer, write_together

from ._errors import UsageError


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
    """Write the files ``{name: writer}`` into the folder ``out``, all of them or none
    (:func:`sigprop._files.write_together`), creating ``out`` only now; a folder this run
    created is removed again if the writing fails."""
    created = _make_folder(out)
    done = False
    try:
        write_together(out, writers)
        done = True
    except OSError as e:
        raise UsageError(f"cannot write to {str(out)!r} ({e.strerror or e})") from e
    finally:
        if not done:
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
