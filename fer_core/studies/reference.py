"""The reference study: the seed report's experiment rerun on FER2013, sized to fit a time window.

``python -m fer_core reference`` trains, in parallel processes (a GPU fits many small models at once):

- ``mobilenet`` at budgets 2e4, 5e4, 3e5, 1e6 parameters plus width 1.0 (the seed network, 107k);
- ``cnn`` at the same budgets plus 107,247 (matched to the seed MobileNet) plus width 1.0 (HW3 size, 5.76M);
- the matched ~1e5 pair (mobilenet w1.0, cnn at 107k) with seeds 0, 1, 2, for the matched-budget gap;
- optionally the two width-1.0 networks once more with the ``better`` recipe.

All runs use the same number of epochs. With ``--fit-in SECONDS`` a short calibration (every run for two
epochs, all at once) measures the slowest epoch under full load and lowers the epoch count, for every run
alike, until the study fits; the number used is printed and recorded in every run.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

from fer_core.analysis.planning import configs
from fer_core.common import FerError
from fer_core.jobs.queue import Job, run_configs
from fer_core.models import count_params, solve_width
from fer_core.models.stats import state_dict_half
from fer_core.store.files import atomic_torch_save, atomic_write_json, load_weights_file, read_json
from fer_core.store.runs import Run
from fer_core.training.config import RunConfig

BUDGETS = [2e4, 5e4, 3e5, 1e6]
SEED_MOBILENET_PARAMS = 107_247
Q4_SEEDS = [0, 1, 2]


def plan(better: bool = True) -> list[dict]:
    """The runs of the reference study, heaviest first (so the longest runs start first)."""
    items = []
    for family in ("mobilenet", "cnn"):
        budgets = BUDGETS + ([SEED_MOBILENET_PARAMS] if family == "cnn" else [])
        widths = sorted({solve_width(family, b)[0] for b in budgets} | {1.0})
        for w in widths:
            q4 = (family == "mobilenet" and w == 1.0) or (
                family == "cnn" and w == solve_width("cnn", SEED_MOBILENET_PARAMS)[0]
            )
            for seed in Q4_SEEDS if q4 else [0]:
                items.append(
                    {"family": family, "width": w, "seed": seed, "recipe": "seed", "role": "q4" if q4 else "sweep"}
                )
    if better:
        for family in ("mobilenet", "cnn"):
            items.append({"family": family, "width": 1.0, "seed": 0, "recipe": "better", "role": "better"})
    return sorted(items, key=lambda it: -count_params(it["family"], it["width"]))


def study_configs(items: list[dict], epochs: int, base: RunConfig) -> list[RunConfig]:
    """The items as configs: ``base`` (data, device, ...) with each item's model, seed, recipe and ``epochs``."""
    cfgs = configs(items, base)
    for cfg in cfgs:
        cfg.train.epochs = epochs
    return cfgs


def calibrate(cfgs: list[RunConfig], parallel: int, epochs: int = 3) -> dict:
    """Run every config for ``epochs`` epochs at once; return the slowest epoch time per config (after the
    first, which pays for start-up), the slowest overall, and the start-up overhead."""
    short = []
    for cfg in cfgs:
        c = cfg.copy()
        c.train.epochs, c.train.checkpoint_every = epochs, 1000
        short.append(c)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        jobs = run_configs(short, parallel, out=tmp)
        wall = time.time() - t
        per_config = []
        for j in jobs:
            if j.returncode != 0 or not j.run_path:  # the real run will fail the same way and be reported
                print(f"calibration run failed: {' '.join(j.argv)}\n{j.stderr_tail}", file=sys.stderr)
                per_config.append(None)
                continue
            per_config.append(max(r["epoch_s"] for r in Run(Path(j.run_path)).metrics()[1:] or [{"epoch_s": 0}]))
    timed = [s for s in per_config if s is not None]
    if not timed:
        raise FerError("every calibration run failed; see the messages above")
    slowest = max(timed)
    return {
        "wall_s": round(wall, 2),
        "epoch_s": per_config,
        "slowest_epoch_s": slowest,
        "overhead_s": max(0.0, wall - epochs * slowest),
    }


def missing(items: list[dict], done_dir: Path, epochs: int) -> list[dict]:
    """The planned runs that ``done_dir`` does not hold yet as completed runs of ``epochs`` epochs."""
    have = set()
    for run in Path(done_dir).iterdir() if Path(done_dir).is_dir() else []:
        s = read_json(run / "summary.json") or {}
        if s.get("status") == "completed" and not s.get("derived_from"):  # an ONNX variant trained nothing
            if s.get("epochs") != epochs:
                raise FerError(
                    f"{run.name} trained {s.get('epochs')} epochs, not {epochs}: use --epochs {s.get('epochs')}"
                )
            have.add((s["family"], float(s["width"]), int(s["seed"]), s.get("recipe", "seed")))
    return [it for it in items if (it["family"], float(it["width"]), it["seed"], it["recipe"]) not in have]


def run_reference(
    epochs: int = 100,
    fit_in: float | None = None,
    parallel: int = 8,
    base: RunConfig | None = None,
    better: bool = True,
    dry_run: bool = False,
    skip_done: Path | None = None,
    out: str | None = None,
    backend: dict | None = None,
) -> dict:
    """Train the reference study; returns a record (epochs used, calibration, per-run results, wall time).

    With ``skip_done`` only the planned runs that folder lacks are trained (completing an interrupted study).
    """
    if fit_in and backend:
        raise FerError("--fit-in times the runs on this machine's device; on a Ray cluster give --epochs instead")
    items = plan(better)
    if skip_done:
        items = missing(items, skip_done, epochs)
        if not items:
            raise FerError(f"{skip_done} already holds every planned run")
    base = base or RunConfig()
    say = lambda *a: print(*a, file=sys.stderr, flush=True)
    say(f"reference study: {len(items)} runs, {parallel} at a time")
    for it in items:
        say(
            f"  {it['family']:<10} w{it['width']:<7g} {count_params(it['family'], it['width']):>10,} params  "
            f"seed {it['seed']}  recipe {it['recipe']}"
        )
    record: dict = {"runs": len(items), "parallel": parallel, "epochs_asked": epochs}
    if dry_run:
        return record
    t0 = time.time()
    if fit_in:
        cal = calibrate(study_configs(items, epochs, base), parallel)
        waves = math.ceil(len(items) / parallel)
        # 0.7: on an H100 a 0.9 margin proved too thin (17 runs at once were slower than their calibration)
        fit = int((fit_in - cal["wall_s"] - waves * cal["overhead_s"]) / (waves * cal["slowest_epoch_s"]) * 0.7)
        record["calibration"] = cal
        if fit < epochs:
            say(
                f"calibration: slowest epoch {cal['slowest_epoch_s']:.2f} s under load: {epochs} epochs do not fit "
                f"in {fit_in:.0f} s; every run uses {max(1, fit)} epochs"
            )
            epochs = max(1, fit)
        else:
            say(f"calibration: slowest epoch {cal['slowest_epoch_s']:.2f} s under load; {epochs} epochs fit")
    record["epochs"] = epochs
    t1 = time.time()
    jobs = run_configs(study_configs(items, epochs, base), parallel, out=out, on_done=report_done(say), backend=backend)
    record["sweep_wall_s"] = round(time.time() - t1, 1)
    record["total_wall_s"] = round(time.time() - t0, 1)
    record["results"] = [
        {**it, "exit": j.returncode, "run": Path(j.run_path).name if j.run_path else None} for it, j in zip(items, jobs)
    ]
    say(f"reference study: {record['sweep_wall_s']:.0f} s for the sweep, {record['total_wall_s']:.0f} s in all")
    return record


def report_done(say):
    """An on_done callback that says how each training ended (accuracies, time, speed; or why it failed)."""

    def done(job: Job) -> None:
        s = read_json(Path(job.run_path) / "summary.json") if job.run_path else None
        if job.returncode == 0 and s:
            say(
                f"done: {s['run_id']}: public {s['public_acc']:.4f} private {s['private_acc']:.4f} "
                f"{s['wall_s']:.0f} s {s.get('img_per_s') or 0:,.0f} img/s"
            )
        else:
            say(f"FAILED ({job.returncode}): {' '.join(job.argv)}\n{job.stderr_tail}")

    return done


def _run_id_of(ref: str) -> str:
    """A run reference as a run id: a run folder's name, a weights file's run folder name, or the id itself."""
    p = Path(ref)
    if p.suffix == ".pt":
        return p.parent.name if (p.parent / "summary.json").is_file() else p.name
    return p.name


def export_run(run: Run, dest: Path, weights: str = "fp16") -> Path:
    """Copy a finished run (config, summary, metrics, and weights as fp16/fp32/none) into ``dest``."""
    s = run.summary()
    if s.get("status") != "completed":
        raise FerError(f"run {run.run_id} is {s.get('status')}, only completed runs can be exported")
    out = Path(dest) / run.run_id
    out.mkdir(parents=True, exist_ok=True)
    if (run.path / "metrics.jsonl").is_file():
        (out / "metrics.jsonl").write_bytes((run.path / "metrics.jsonl").read_bytes())
    cfg = run.config()
    cfg["data"]["data"] = None  # where the data lay is the trainer's business; data_fingerprint names it
    # teachers and the init run by run id: the folders they trained in stay behind
    distill = cfg.get("distill") or {}
    distill["teachers"] = [_run_id_of(t) for t in distill.get("teachers") or []]
    if cfg.get("init"):
        cfg["init"] = _run_id_of(cfg["init"])
    if (cfg.get("prune") or {}).get("parent"):
        cfg["prune"]["parent"] = _run_id_of(cfg["prune"]["parent"])
    atomic_write_json(out / "config.json", cfg)
    s = {k: v for k, v in s.items() if k not in ("source", "path", "pid", "host", "heartbeat")}
    if weights != "none" and run.weights_file.is_file():
        payload = load_weights_file(run.weights_file)
        if weights == "fp16":
            payload["state_dict"] = state_dict_half(payload["state_dict"])
        name = f"weights_{weights}.pt" if weights == "fp16" else "weights.pt"
        atomic_torch_save(out / name, payload)
        s["weights"] = name
    else:
        s["weights"] = None
    atomic_write_json(out / "summary.json", s)
    return out


def write_record(record: dict, path: Path) -> None:
    """Save a study's record as JSON and print its scalar fields (epochs, timings) on stderr."""
    atomic_write_json(path, record)
    print(json.dumps({k: v for k, v in record.items() if not isinstance(v, (list, dict))}), file=sys.stderr)
