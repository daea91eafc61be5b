"""A job's plan on disk: each item is one training, started as ``train --config FILE``; read its config back."""

from __future__ import annotations

from pathlib import Path

from fer_core.store.files import read_json


def argv_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def item_config(item: dict) -> dict:
    """The config a queued training trains (read from its config file; {} if it is gone)."""
    path = argv_value(item["argv"], "--config")
    return (read_json(Path(path)) or {}) if path else {}
