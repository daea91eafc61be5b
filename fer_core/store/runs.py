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


def search_dirs() -> list[Path]:
    """Where runs are listed from: the user's runs first, then the shipped reference runs."""
    dirs = [runs_dir()]
    if reference_dir().resolve() != dirs[0].resolve():
        dirs.append(reference_dir())
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
        """The summary as stored, with a dead 'running' process reported as failed."""
        s = read_json(self.summary_file) or {"run_id": self.run_id, "status": "failed", "error": "no summary.json"}
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
        return time.time() - float(s.get("heartbeat", 0)) < 6 * 3600  # another machine: trust a fresh heartbeat

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


def list_summaries(dirs: list[Path] | None = None) -> list[dict]:
    """Every run's summary, each with ``source`` = "user" or "reference" and its folder."""
    out = []
    ref = reference_dir().resolve()
    for run in iter_runs(dirs):
        s = run.summary()
        s["source"] = "reference" if run.path.parent.resolve() == ref else "user"
        s["path"] = str(run.path)
        out.append(s)
    return out


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
    rows = [
        {
            **{k: v for k, v in s.items() if not isinstance(v, (dict, list))},
            "lineage": lineage_text(s),
            "format": s.get("format") or "torch",
            "bytes": s.get("bytes") or s.get("bytes_fp16"),
        }
        for s in list_summaries(dirs)
    ]
    df = pd.DataFrame(rows)
    for c in TABLE_COLUMNS:
        if c not in df.columns:
            df[c] = None
    return df[TABLE_COLUMNS + [c for c in df.columns if c not in TABLE_COLUMNS]]


def lineage_text(s: dict) -> str:
    """One line on where a run came from: its recipe, teachers (with their private accuracy), init run."""
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
