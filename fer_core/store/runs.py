"""The results store: one folder per run, atomic writes, status that tells the truth, a table of all runs.

A run folder holds::

    config.json      the RunConfig that rebuilds the model and repeats the run
    metrics.jsonl    one JSON line per finished epoch
    summary.json     everything known about the run (schema in results/README.md), rewritten atomically
    weights.pt       the selected (best public accuracy) weights, loadable with torch.load(weights_only=True)
    checkpoint.pt    the last epoch's full state for --resume (removed when the run completes)

User runs go to ``results/runs/`` (git-ignored; ``$FER_RUNS`` overrides); shipped runs live in
``results/reference/`` (committed). Every write is a temp file + rename, so a killed process never
leaves half a file, and run ids are created with an exclusive mkdir, so two runs never share a folder.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fer_core.common import FerError
from fer_core.common.errors import writing
from fer_core.common.paths import PROJECT_DIR
from fer_core.store.files import atomic_write_bytes, atomic_write_json, read_json

RESULTS_DIR = PROJECT_DIR / "results"
REFERENCE_DIR = RESULTS_DIR / "reference"  # the shipped runs; $FER_REFERENCE points elsewhere (tests do)


def runs_dir() -> Path:
    """Where new runs are written: ``$FER_RUNS``, else ``results/runs``."""
    return Path(os.environ.get("FER_RUNS") or RESULTS_DIR / "runs")


def reference_dir() -> Path:
    """Where the shipped reference runs are: ``$FER_REFERENCE``, else ``results/reference``."""
    return Path(os.environ.get("FER_REFERENCE") or REFERENCE_DIR)


def study_dirs() -> list[Path]:
    """The shipped studies' run folders: every folder of ``$FER_STUDIES`` (else ``results/``) with a plan.json."""
    root = Path(os.environ.get("FER_STUDIES") or RESULTS_DIR)
    return sorted(p.parent for p in root.glob("*/plan.json")) if root.is_dir() else []


def search_dirs() -> list[Path]:
    """Where runs are listed from: the user's runs first, then the shipped reference runs and studies."""
    dirs = [runs_dir()]
    for d in [reference_dir(), *study_dirs()]:
        if all(d.resolve() != o.resolve() for o in dirs):
            dirs.append(d)
    return dirs


# --------------------------------------------------------------------------------------------------- atomic files


# --------------------------------------------------------------------------------------------------- one run


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a recycled pid belongs to some other program; ours are always Python processes
        return pid == os.getpid() or b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


@dataclass
class Run:
    """A run folder. Cheap to make; reads files on demand."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, family: str, width: float, seed: int, root: Path | None = None) -> Run:
        root = Path(root or runs_dir())
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for _ in range(100):
            rid = f"{family}-w{width:g}-s{seed}-{stamp}-{secrets.token_hex(2)}"
            try:
                (root / rid).mkdir()
                return cls(root / rid)
            except FileExistsError:
                continue
        raise FerError(f"could not create a run folder in {root}")

    # files
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def weights_file(self) -> Path:
        for name in ("weights.pt", "weights_fp16.pt"):
            if (self.path / name).is_file():
                return self.path / name
        return self.path / "weights.pt"

    @property
    def checkpoint_file(self) -> Path:
        return self.path / "checkpoint.pt"

    def config(self) -> dict:
        cfg = read_json(self.config_file)
        if cfg is None:
            raise FerError(f"run {self.run_id}: config.json is missing or unreadable")
        return cfg

    def data_spec(self) -> str | None:
        """The data this run was trained on, as a spec to load here: its config's path if that exists on this
        machine (or "synthetic"), else None (the usual search: ``$FER_DATA``, ``data/``, synthetic)."""
        spec = ((read_json(self.config_file) or {}).get("data") or {}).get("data")
        synthetic = spec and (spec == "synthetic" or spec.startswith("synthetic:"))
        return spec if synthetic or (spec and Path(spec).exists()) else None

    def summary(self) -> dict:
        """The summary as stored, with a dead 'running' process reported as failed, and a damaged or missing
        summary.json said as such (``damaged`` names the file)."""
        s = read_json(self.summary_file)
        if not isinstance(s, dict):
            what = "damaged (not a JSON object)" if self.summary_file.is_file() else "missing"
            return {"run_id": self.run_id, "status": "failed", "error": f"summary.json is {what}", "damaged": True}
        if s.get("status") == "running" and not self._alive(s):
            s["status"] = "failed"
            s["error"] = s.get("error") or "the training process died (killed or crashed) before finishing"
        return s

    def _alive(self, s: dict) -> bool:
        pid, host = s.get("pid"), s.get("host")
        if pid is None:
            return False
        if host == socket.gethostname():
            return pid_alive(int(pid))
        # another machine (a cluster node, or a clone this folder was copied from): alive while its heartbeat,
        # written every epoch, is younger than three of its epochs (and at least 10 minutes)
        done = max(1, int(s.get("epochs_done") or 0))
        epoch_s = float(s.get("wall_s") or 0) / done
        return time.time() - float(s.get("heartbeat", 0)) < max(600.0, 3 * epoch_s)

    def update_summary(self, **fields) -> dict:
        s = read_json(self.summary_file) or {}
        s.update(fields)
        s["run_id"] = self.run_id
        if s.get("status") != "running":
            s.pop("pid", None)
            s.pop("host", None)
        atomic_write_json(self.summary_file, s)
        return s

    def mark_running(self, **fields) -> dict:
        return self.update_summary(
            status="running", pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time(), **fields
        )

    def append_metrics(self, row: dict) -> None:
        with writing(self.metrics_file), open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        """Per-epoch rows; a line cut short by a kill is skipped."""
        rows = []
        try:
            lines = self.metrics_file.read_text().splitlines()
        except OSError:
            return rows
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def truncate_metrics(self, epochs_done: int) -> None:
        """Keep the rows of the first ``epochs_done`` epochs (used when resuming from a checkpoint)."""
        rows = [r for r in self.metrics() if r.get("epoch", 0) <= epochs_done]
        atomic_write_bytes(self.metrics_file, "".join(json.dumps(r) + "\n" for r in rows).encode())


# --------------------------------------------------------------------------------------------------- the store


def iter_runs(dirs: list[Path] | None = None):
    for d in dirs or search_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_dir() and (p / "summary.json").is_file():
                yield Run(p)


_RANK = {"completed": 0, "running": 1, "cancelled": 2, "failed": 3}


def scan(dirs: list[Path] | None = None) -> tuple[list[dict], list[str]]:
    """Every run's summary, one per run id, and a one-line note for each duplicate or damaged run folder.

    A run id found in two folders (a shipped run copied into the user's runs, a study folder copied between
    clones) is listed once: its completed copy, else the first in search order; the note names the other.
    Each summary carries ``source`` ("user", "reference" or "study") and its folder.
    """
    ref = reference_dir().resolve()
    studies = {d.resolve() for d in study_dirs()}
    by_id: dict[str, dict] = {}
    notes = []
    for run in iter_runs(dirs):
        s = run.summary()
        parent = run.path.parent.resolve()
        s["source"] = "reference" if parent == ref else "study" if parent in studies else "user"
        s["path"] = str(run.path)
        if s.get("damaged"):
            notes.append(f"{run.summary_file}: {s['error']}; the run is listed as failed")
        old = by_id.get(run.run_id)
        if old is None:
            by_id[run.run_id] = s
            continue
        keep, drop = (s, old) if _RANK.get(s.get("status"), 9) < _RANK.get(old.get("status"), 9) else (old, s)
        by_id[run.run_id] = keep
        notes.append(f"run {run.run_id} is in two places: listed from {keep['path']}, not from {drop['path']}")
    return list(by_id.values()), notes


def list_summaries(dirs: list[Path] | None = None) -> list[dict]:
    """Every run's summary, one per run id (see :func:`scan`), each with ``source`` and its folder."""
    return scan(dirs)[0]


def store_notes(dirs: list[Path] | None = None) -> list[str]:
    """The duplicate and damaged run folders of the store, one line each (empty when all is well)."""
    return scan(dirs)[1]


TABLE_COLUMNS = [
    "run_id",
    "family",
    "width",
    "format",
    "params",
    "bytes",
    "bytes_fp16",
    "macs",
    "public_acc",
    "private_acc",
    "status",
    "epochs_done",
    "epochs",
    "seed",
    "data",
    "recipe",
    "source",
    "derived_from",
]


def table(dirs: list[Path] | None = None):
    """All runs as a pandas DataFrame (one row per run, the summary's flat fields as columns, and its
    lineage as one line of text).

    ``format`` is "torch" for a trained run and "onnx-fp32"/"onnx-fp16"/"onnx-int8" for a derived variant;
    ``bytes`` is the size on disk of what would be deployed: the ONNX file of a variant, the fp16 state dict
    (``torch.save``) of a trained run."""
    summaries, notes = scan(dirs)
    rows = [
        {
            **{k: v for k, v in s.items() if not isinstance(v, (dict, list))},
            "lineage": lineage_text(s),
            "prune_steps": ((s.get("lineage") or {}).get("prune") or {}).get("steps"),
            "format": s.get("format") or "torch",
            "bytes": s.get("bytes") or s.get("bytes_fp16"),
        }
        for s in summaries
    ]
    df = pd.DataFrame(rows)
    for c in TABLE_COLUMNS:
        if c not in df.columns:
            df[c] = None
    df = df[TABLE_COLUMNS + [c for c in df.columns if c not in TABLE_COLUMNS]]
    df.attrs["notes"] = notes  # the duplicate and damaged folders, for the pages and commands to say
    return df


def lineage_text(s: dict) -> str:
    """One line on where a run came from: its recipe, teachers (with their private accuracy), init run, the
    run it was pruned from."""
    lin = s.get("lineage") or {}
    parts = [f"recipe {s.get('recipe') or lin.get('recipe') or 'seed'}"]
    for t in lin.get("teachers") or []:
        acc = t.get("private_acc")
        parts.append(
            f"taught by {t['run_id']} ({t.get('family')} {t.get('params') or 0:,} params"
            + (f", private {acc:.4f}" if isinstance(acc, float) else "")
            + ")"
        )
    if lin.get("distill"):
        parts.append(f"T={lin['distill']['temperature']:g}, alpha={lin['distill']['alpha']:g}")
    init = lin.get("init")
    if init:
        acc = init.get("private_acc")
        parts.append(f"fine-tuned from {init['run_id']}" + (f" (private {acc:.4f})" if isinstance(acc, float) else ""))
    prune = lin.get("prune")
    if prune:
        parent, acc = prune["parent"], prune["parent"].get("private_acc")
        parts.append(
            f"pruned from {parent['run_id']} ({parent.get('params') or 0:,} params"
            + (f", private {acc:.4f}" if isinstance(acc, float) else "")
            + f"; {prune['importance']}, {prune['steps']} step{'s' if prune['steps'] > 1 else ''})"
        )
    return " · ".join(parts)


def find_run(ref: str) -> Run:
    """A run by id (in any search dir) or by folder path."""
    p = Path(ref)
    if p.is_dir():
        return Run(p)
    for d in search_dirs():
        if (d / ref).is_dir():
            return Run(d / ref)
    matches = [r for r in iter_runs() if r.run_id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise FerError(f"run {ref!r} is ambiguous: {', '.join(r.run_id for r in matches[:5])}")
    raise FerError(f"no run {ref!r}: give a run id (see `python -m fer_core runs`), a run folder or a weights file")


# --------------------------------------------------------------------------------------------------- weights
