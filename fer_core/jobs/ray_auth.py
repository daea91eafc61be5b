"""Ray's token authentication as FER Lab uses it: find the token, keep its file private, and turn a refused
connection into one line that says what to do.

A cluster started with ``RAY_AUTH_MODE=token`` accepts only clients that present its token. Ray reads the
token from ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``, but turns
token mode on by itself only for local clusters: for an address, :func:`prepare_client` turns it on when a
token is there. Ray 2.60 writes ``~/.ray/auth_token`` readable by every local user; :func:`secure_token_files`
makes such a file ``0600`` (owner only) and says so. Nothing here imports ray.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path

from fer_core.common import FerError

MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def token_files() -> list[Path]:
    """The token files Ray may read here (the one ``$RAY_AUTH_TOKEN_PATH`` names, and the default)."""
    named = os.environ.get(TOKEN_PATH_ENV)
    return ([Path(named).expanduser()] if named else []) + [default_token_path()]


def token_source() -> str | None:
    """Where Ray will take the token from, in Ray's order (None: no token here)."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return f"${TOKEN_ENV}"
    named = os.environ.get(TOKEN_PATH_ENV)
    if named:  # Ray treats an unreadable or empty named file as fatal: say so before it does
        path = Path(named).expanduser()
        try:
            if path.read_text().strip():
                return str(path)
        except OSError as e:
            raise FerError(f"{TOKEN_PATH_ENV}={named}: cannot read the Ray token file ({e.strerror})") from None
        raise FerError(f"{TOKEN_PATH_ENV}={named}: the Ray token file is empty")
    path = default_token_path()
    try:
        return str(path) if path.is_file() and path.read_text().strip() else None
    except OSError:
        return None


def secure_token_files() -> list[str]:
    """Make every token file here readable by its owner only; one note per file that had to be tightened."""
    notes = []
    for path in dict.fromkeys(token_files()):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                os.chmod(path, 0o600)
                notes.append(f"made the Ray token file {path} readable by its owner only (it was {mode:04o})")
        except OSError:  # not there, or not ours to change
            continue
    return notes


def generate_token(path: Path | None = None, force: bool = False) -> Path:
    """Write a new random token to ``path`` (default ``~/.ray/auth_token``), created ``0600`` from the start."""
    path = Path(path or default_token_path()).expanduser()
    if path.exists() and not force:
        raise FerError(f"{path} already holds a token (use --force to replace it; every node then needs the new one)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token.")  # mkstemp creates it 0600
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, path)
    return path


def prepare_client(address: str | None) -> str | None:
    """Before connecting: tighten token files (notes on stderr) and, for a cluster's address, turn token mode
    on when a token is here and ``RAY_AUTH_MODE`` is unset. Returns where the token comes from (or None)."""
    for note in secure_token_files():
        print(f"note: {note}", file=sys.stderr)
    source = token_source()
    if address and source and not os.environ.get(MODE_ENV):
        os.environ[MODE_ENV] = "token"  # a cluster without auth accepts a client that sends a token
        with contextlib.suppress(ImportError, AttributeError):  # ray read its mode at import: refresh it
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
    return source


def refusal(address: str, source: str | None, error_text: str) -> str | None:
    """The one line to show when ``error_text`` (the exception and Ray's log) says the cluster refused this
    client's token; None when the failure was something else."""
    text = error_text.lower()
    if not any(k in text for k in ("unauthenticated", "invalidauthtoken", "authentication token", "auth_token")):
        return None
    if source is None or "no authentication token was found" in text:
        return (
            f"the Ray cluster at {address} asks for a token (RAY_AUTH_MODE=token) and none was found here: copy "
            f"the cluster's token to {default_token_path()} (chmod 600) or point {TOKEN_PATH_ENV} at it"
        )
    return f"the Ray cluster at {address} refused the token from {source}: use the token the cluster was started with"


@contextlib.contextmanager
def captured_stderr():
    """Collect what C++ code writes to file descriptor 2 (Ray's GCS client logs each refused attempt there)
    into a list of one string, instead of the user's terminal."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
