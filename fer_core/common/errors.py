"""User-facing errors: bad input that deserves a clear message, never a traceback."""

import errno
import os
from contextlib import contextmanager


class FerError(Exception):
    """An error caused by the user's input (a file, a row, a field, an argument).

    The command line prints its message to stderr and exits with code 2; the dashboard shows it.
    """


class DiskFull(FerError):
    """A write failed for want of space: the disk (or quota) is full, or a file-size limit was reached."""

    ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "a file-size limit", errno.EDQUOT: "quota"}

    def __init__(self, path: str | os.PathLike, reason: str = ""):
        self.path = str(path)
        super().__init__(f"disk full writing {path}" + (f" ({reason})" if reason else ""))


@contextmanager
def writing(path: str | os.PathLike):
    """Report a write that failed for want of space as :class:`DiskFull` naming ``path`` (what the user knows,
    not a temporary file beside it); any other error passes through unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno in DiskFull.ERRNOS:
            raise DiskFull(path, DiskFull.ERRNOS[e.errno]) from None
        raise
