"""Files written all together or not at all: the library's one way to put results on disk.

Every file is written under a temporary name beside its final one (``.NAME.partial-PID.SUFFIX``),
then all are renamed into place with Ctrl-C and SIGTERM held back: a reader sees the previous
complete set of files or the new one, never a part, and a failure leaves no temporary behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Writer", "write_atomic", "write_together"]

Writer = Callable[[Path], object]
"""Writes one file at the path it is given (a temporary name with the final suffix)."""

_HELD = {signal.SIGINT, signal.SIGTERM}


def write_together(folder: Path, writers: Mapping[str, Writer]) -> None:
    """Write the files ``{name: writer}`` into the existing ``folder``, all of them or none.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_together(folder, {"a.txt": lambda p: p.write_text("a")})
    >>> sorted(p.name for p in folder.iterdir()), (folder / "a.txt").read_text()
    (['a.txt'], 'a')
    """
    staged: list[tuple[Path, Path]] = []
    done = False
    try:
        for name, write in writers.items():
            final = folder / name
            temporary = folder / f".{final.stem}.partial-{os.getpid()}{final.suffix}"
            staged.append((temporary, final))
            write(temporary)
        with _signals_held():
            for temporary, final in staged:
                os.replace(temporary, final)
        done = True
    finally:
        if not done:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)


def write_atomic(path: Path, write: Writer) -> None:
    """Have ``write`` write a temporary file beside ``path``, then rename it to ``path``."""
    write_together(path.parent, {path.name: write})


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
