"""Files that never tear: atomic writes (temp file + rename), forgiving JSON reads, and self-describing weights
files that load without running pickled code (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import secrets
import warnings
import zipfile
from pathlib import Path

import torch

from fer_core.common import EMOTIONS, FerError
from fer_core.common.errors import writing

WEIGHTS_FORMAT = "fer-lab/weights/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    A full disk (or a file-size limit) raises :class:`~fer_core.common.DiskFull` naming ``path``; the old file
    is then untouched and the partial temporary file removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        with writing(path), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: Path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):  # missing, half-written, damaged or absurdly nested
        return None


def weights_payload(state_dict: dict, model_cfg: dict, **meta) -> dict:
    """A self-describing checkpoint: weights plus what rebuilds the model (all tensors and plain types)."""
    return {"format": WEIGHTS_FORMAT, "state_dict": state_dict, "model": model_cfg, "classes": list(EMOTIONS), **meta}


def load_weights_file(path: Path) -> dict:
    """Load a weights file safely: never runs pickled code; a file that is not plain data is refused, and a
    damaged one (random bytes, cut short) is called that, not mistaken for an attack."""
    path = Path(path)
    if not path.is_file():
        raise FerError(f"{path}: weights file not found")
    try:
        with warnings.catch_warnings():  # torch's remarks on a file's pickle protocol are not the user's business
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and ("GLOBAL" in str(e) or _names_code(path)):
            raise FerError(
                f"{path}: refused: not a plain state dict (it holds pickled objects that could run code; "
                "nothing of it was executed)"
            ) from None
        raise FerError(f"{path}: not a valid weights file (damaged, cut short, or not a PyTorch file)") from None
    if isinstance(obj, dict) and obj.get("format") == WEIGHTS_FORMAT:
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": None, "state_dict": obj, "model": None, "classes": list(EMOTIONS)}
    raise FerError(f"{path}: not a state dict (found {type(obj).__name__})")


def _names_code(path: Path) -> bool:
    """True if ``path`` is a well-formed pickle stream (or a zip holding one) that imports something.

    Read with pickletools, which parses opcodes and executes nothing. Random or cut-short bytes fail to
    parse and are reported as damaged, not as an attack.
    """
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
            data = z.read(pkl[0]) if pkl else b""
    imports, pos = False, 0
    try:
        while pos < len(data):  # the legacy format is several pickles one after another
            for op, _, end in pickletools.genops(data[pos:]):
                imports |= op.name in ("GLOBAL", "STACK_GLOBAL", "INST")
                if op.name == "STOP":
                    pos += end + 1
                    break
            else:
                return False
    except Exception:
        return False
    return imports
