"""What this installation has: which data would be used, which device would train."""

from __future__ import annotations

from fer_core.common import FerError
from fer_core.data.sources import load, resolve_spec
from fer_core.training.device import device_status

__all__ = ["data_status", "device_status"]


def data_status(spec: str | None = None) -> dict:
    """The data the defaults resolve to, described (or the error that loading it gives)."""
    try:
        resolved = resolve_spec(spec)
        d = load(resolved)
    except FerError as e:
        return {"ok": False, "error": str(e), "synthetic": None, "data": None}
    return {"ok": True, "spec": resolved, **d.describe()}
