"""What this installation has: which data would be used, which device would train."""

from __future__ import annotations

import torch

from fer_core.common import FerError
from fer_core.data.sources import load, resolve_spec


def data_status(spec: str | None = None) -> dict:
    """The data the defaults resolve to, described (or the error that loading it gives)."""
    try:
        resolved = resolve_spec(spec)
        d = load(resolved)
    except FerError as e:
        return {"ok": False, "error": str(e), "synthetic": None, "data": None}
    return {"ok": True, "spec": resolved, **d.describe()}


def device_status() -> dict:
    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {"device": "cpu", "name": "CPU only", "count": 0, "threads": torch.get_num_threads()}
