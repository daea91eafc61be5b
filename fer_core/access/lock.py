"""The dashboard's password lock for shared use.

Set ``FER_LAB_PASSWORD`` (or the Streamlit secret of the same name) and every page asks for it before it
shows anything; unset, the dashboard is open, as for local use. The check:

- compares SHA-256 digests with :func:`hmac.compare_digest`, so the time it takes says nothing about how
  much of a guess was right (nor, through the digest, how long the password is);
- is process-wide and one guess at a time: every wrong guess, from any browser session, makes the next
  answer wait longer (1, 2, 4, 8 s, then 8 s each while wrong guesses keep coming within 15 minutes), so
  opening more tabs does not buy more guesses;
- never stores, logs or returns the password: a session that gave it keeps only a fingerprint keyed by a
  random per-process secret (see :meth:`Lock.fingerprint`), which also re-locks sessions when the password
  changes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

#: The environment variable (and Streamlit secret) that holds the password.
PASSWORD_ENV = "FER_LAB_PASSWORD"
#: Delays after consecutive wrong guesses, in seconds (the last one repeats).
DELAYS_S = (1.0, 2.0, 4.0, 8.0)
#: Wrong guesses older than this no longer count.
WINDOW_S = 15 * 60

_PROCESS_KEY = secrets.token_bytes(32)  # fingerprints are worthless outside this process


def configured_password(secrets_: Mapping | None = None) -> str | None:
    """The password in force: ``$FER_LAB_PASSWORD``, else the secret of that name; None (or empty) = unlocked."""
    value = os.environ.get(PASSWORD_ENV)
    if not value and secrets_ is not None:
        value = secrets_.get(PASSWORD_ENV)
    return str(value) if value else None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class Lock:
    """One password, checked one guess at a time with growing delays after wrong ones."""

    def __init__(self, password: str, sleep: Callable[[float], None] = time.sleep, clock=time.monotonic):
        if not password:
            raise ValueError("a lock needs a non-empty password")
        self._digest = _digest(password)
        self._sleep, self._clock = sleep, clock
        self._guard = threading.Lock()
        self._wrong: deque[float] = deque()

    def fingerprint(self) -> str:
        """What an unlocked session keeps: says "this password", reveals nothing of it."""
        return hmac.new(_PROCESS_KEY, self._digest, hashlib.sha256).hexdigest()

    def check(self, guess: str) -> bool:
        """True if ``guess`` is the password; a wrong guess returns only after its delay."""
        with self._guard:  # guesses queue up: parallel sessions share one pace
            if hmac.compare_digest(_digest(guess or ""), self._digest):
                return True
            now = self._clock()
            while self._wrong and now - self._wrong[0] > WINDOW_S:
                self._wrong.popleft()
            self._wrong.append(now)
            self._sleep(DELAYS_S[min(len(self._wrong), len(DELAYS_S)) - 1])
            return False


_LOCKS: dict[bytes, Lock] = {}
_LOCKS_GUARD = threading.Lock()


def password_lock(password: str) -> Lock:
    """The process's one :class:`Lock` for ``password`` (every session shares its count of wrong guesses)."""
    key = _digest(password)
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = Lock(password)
        return _LOCKS[key]
