"""The four families compared on the machine you have: a study that resumes anywhere.

``python -m fer_core study families --hours H`` trains the runs of a plan (``plan.json`` in the study folder,
``results/cpu-study/`` by default, written on the first start) in priority order on whatever device is
present, one at a time in this process (or ``--workers N`` at once, each in a process of its own), each
checkpointed every epoch. Started again — on the same machine
or on another clone that has the committed study folder — it continues where it stopped: completed runs are
kept, an interrupted run resumes from its last checkpoint, nothing is trained twice. Before training it prints
the plan with each run's estimated time (from the epochs this device already trained, else a short
measurement of the engine here) and which runs fit the budget; when the budget runs out it stops after the
epoch in progress, leaving that run resumable. This module is the plan, its runs' states and estimates (what the
pages and ``--status`` read); :mod:`fer_core.studies.study_run` trains it.

The default plan asks the question where the seed's budgets are tight: mobilenet, cnn, mobilenetv2 and
shufflenetv2 at about 1e5, 5e4 and 2e4 parameters, then two more seeds at 1e5, then 3e5, on the seed report's
own 95-epoch protocol. Runs the shipped reference already holds on that protocol (the mobilenet and cnn ones,
trained on a GPU) count as done, so only the newer families train. A shorter schedule was checked first
against that reference (40 epochs with a cosine rate, at the CNN of ~1e5): it fell short by more than one of
the reference's standard deviations, so it is not the protocol (its run stays in the plan as the evidence).
``plan.json`` may be edited between two starts (runs added, removed, reordered; a row may set its own
``recipe`` and ``epochs``); runs of the folder that no longer match the plan are kept and named.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: one worker only
    fcntl = None

from fer_core.common import FerError
from fer_core.models import count_params, list_models, solve_width
from fer_core.store.files import atomic_write_json, read_json
from fer_core.store.runs import RESULTS_DIR, Run, reference_dir
from fer_core.studies.train_bench import engine_speed, training_data
from fer_core.training.config import RECIPES, RunConfig, apply_recipe
from fer_core.training.device import device_name, resolve_device

DEFAULT_DIR = RESULTS_DIR / "cpu-study"
SEED_MOBILENET_PARAMS = 107_247
FAMILIES = ("mobilenet", "cnn", "mobilenetv2", "shufflenetv2")
#: the families' protocol: the seed report's own, as the 95-epoch GPU reference ran it, so the reference's mobilenet
#: and cnn runs count as done and only the newer families train (the short schedule below fell short of it)
PROTOCOL = {"recipe": "seed", "epochs": 95, "data_limit": None}
#: the short schedule checked against that reference at the CNN's check point before any family trained on it
SHORT = {"recipe": "seed-cosine", "epochs": 40}
PHASES = ("check", "families", "seeds", "extra")


def default_plan() -> dict:
    """The study as first written: the short protocol's check, then each family at each budget (seed 0, the
    seed MobileNet's size first), then two more seeds at ~1e5, then ~3e5 if the budget allows. Runs the
    reference already holds (mobilenet and cnn on the same protocol) are taken from it, not trained again."""

    def row(family, budget, seed, phase, why, **extra):
        width = 1.0 if (family == "mobilenet" and budget == SEED_MOBILENET_PARAMS) else solve_width(family, budget)[0]
        return {"family": family, "width": width, "seed": seed, "phase": phase, "why": why, **extra}

    check = "is 40 epochs of seed-cosine within one sd of the 95-epoch reference? (it fell 2.3 points short: not used)"
    runs = [row("cnn", SEED_MOBILENET_PARAMS, 0, "check", check, **SHORT)]
    for budget in (SEED_MOBILENET_PARAMS, 5e4, 2e4):
        runs += [row(f, budget, 0, "families", f"~{budget:.0e} parameters") for f in FAMILIES]
    runs += [row(f, SEED_MOBILENET_PARAMS, s, "seeds", "seed spread at ~1e5") for s in (1, 2) for f in FAMILIES]
    runs += [row(f, 3e5, 0, "extra", "~3e5 parameters, if the budget allows") for f in FAMILIES]
    return {"protocol": dict(PROTOCOL), "runs": runs}


# --------------------------------------------------------------------------------------------------- the plan


@dataclass
class Item:
    family: str
    width: float
    seed: int
    phase: str
    why: str = ""
    recipe: str = "seed"
    epochs: int = 95

    @property
    def params(self) -> int:
        return count_params(self.family, self.width)

    def key(self, protocol: dict | None = None) -> tuple:
        return (self.family, round(self.width, 6), self.seed, self.recipe, self.epochs)

    def label(self) -> str:
        return f"{self.family} w{self.width:g} s{self.seed}"


def read_plan(folder: Path) -> tuple[dict, list[Item]]:
    """``plan.json`` checked field by field (errors name the row and field); written from the default if absent."""
    path = Path(folder) / "plan.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, default_plan())
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FerError(
            f"{path}: not a readable JSON plan ({e}); fix it, or delete it to start from the default"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise FerError(f"{path}: a plan is a JSON object with a list of runs under 'runs'")
    protocol = {**PROTOCOL, **(doc.get("protocol") or {})}
    if protocol["recipe"] not in RECIPES:
        raise FerError(f"{path}: protocol.recipe = {protocol['recipe']!r}: choose one of {', '.join(RECIPES)}")
    if not isinstance(protocol["epochs"], int) or protocol["epochs"] < 1:
        raise FerError(f"{path}: protocol.epochs = {protocol['epochs']!r}: a whole number of at least 1")
    items, seen = [], set()
    for i, r in enumerate(doc["runs"]):
        where = f"{path}: runs[{i}]"
        if not isinstance(r, dict):
            raise FerError(f"{where}: each run is an object with family, width (or budget) and seed")
        if r.get("family") not in list_models():
            raise FerError(f"{where}.family = {r.get('family')!r}: choose one of {', '.join(list_models())}")
        width = r.get("width")
        if width is None and isinstance(r.get("budget"), (int, float)) and r["budget"] > 0:
            width = solve_width(r["family"], r["budget"])[0]
        if not isinstance(width, (int, float)) or not 0.01 <= width <= 8:
            raise FerError(f"{where}.width = {width!r}: a width in [0.01, 8], or a positive budget")
        if not isinstance(r.get("seed", 0), int):
            raise FerError(f"{where}.seed = {r.get('seed')!r}: a whole number")
        phase = r.get("phase", "families")
        if phase not in PHASES:
            raise FerError(f"{where}.phase = {phase!r}: one of {', '.join(PHASES)}")
        recipe, epochs = r.get("recipe", protocol["recipe"]), r.get("epochs", protocol["epochs"])
        if recipe not in RECIPES:
            raise FerError(f"{where}.recipe = {recipe!r}: choose one of {', '.join(RECIPES)}")
        if not isinstance(epochs, int) or epochs < 1:
            raise FerError(f"{where}.epochs = {epochs!r}: a whole number of at least 1")
        it = Item(r["family"], float(width), int(r.get("seed", 0)), phase, str(r.get("why", "")), recipe, epochs)
        if it.key(protocol) in seen:
            raise FerError(f"{where}: {it.label()} is planned twice")
        seen.add(it.key(protocol))
        items.append(it)
    return protocol, items


def _run_key(run: Run) -> tuple | None:
    cfg = read_json(run.config_file)
    if not isinstance(cfg, dict):
        return None
    try:
        m, t = cfg["model"], cfg["train"]
        return (m["family"], round(float(m["width"]), 6), int(t["seed"]), cfg.get("recipe"), int(t["epochs"]))
    except (KeyError, TypeError, ValueError):
        return None


def match_runs(folder: Path, protocol: dict, items: list[Item]) -> tuple[dict, list[str]]:
    """Plan key -> the run folder that holds it (a completed copy first); notes for runs outside the plan and
    for duplicates (kept on disk, not used)."""
    keys = {it.key(protocol) for it in items}
    found: dict[tuple, Run] = {}
    notes = []
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not p.is_dir() or not (p / "config.json").is_file():
            continue
        run, key = Run(p), _run_key(Run(p))
        if key not in keys:
            notes.append(f"{p.name} is not in the plan (kept, not trained): {key[:3] if key else 'unreadable config'}")
            continue
        old = found.get(key)
        if old is None or (run.summary().get("status") == "completed" and old.summary().get("status") != "completed"):
            if old is not None:
                notes.append(f"{old.run_id} duplicates {run.run_id} (kept, not used)")
            found[key] = run
        else:
            notes.append(f"{run.run_id} duplicates {old.run_id} (kept, not used)")
    ref = reference_dir()
    for p in sorted(ref.iterdir()) if ref.is_dir() else []:  # the same run on the same protocol, shipped already
        run = Run(p)
        key = _run_key(run) if (p / "config.json").is_file() else None
        if key in keys and key not in found and _plain(run.summary()):
            found[key] = run
    return found, notes


def _plain(s: dict) -> bool:
    """A completed run trained from scratch without a teacher (what a plan item asks for)."""
    return s.get("status") == "completed" and not (s.get("derived_from") or s.get("init_run") or s.get("distilled"))


# --------------------------------------------------------------------------------------------------- estimates


def run_state(run: Run | None, metrics: list[dict] | None = None) -> tuple[str, int]:
    """(done | training | resumable | waiting, epochs done) of a plan item's run (``metrics``: its rows, where
    the caller has read them already)."""
    if run is None:
        return "waiting", 0
    s = run.summary()
    done = max((r.get("epoch", 0) for r in (run.metrics() if metrics is None else metrics)), default=0)
    if s.get("status") == "completed":
        return "done", done
    raw = read_json(run.summary_file) or {}
    if raw.get("status") == "running" and s.get("status") == "running":
        return "training", done
    ck = run.checkpoint_file.is_file()
    return ("resumable" if ck else "waiting"), (done if ck else 0)


def epoch_seconds(
    items: list[Item], found: dict, protocol: dict, n_train: int, n_public: int, device: str, probe: bool = True
) -> dict:
    """Seconds per epoch for each (family, width): the median epoch this device trained in the study folder,
    else a short measurement of the engine here (training images/s; evaluation costs about a third of a step
    per image), else None."""
    here = device_name(resolve_device(device))
    seen: dict[tuple, list[float]] = {}
    for run in found.values():
        s = run.summary()
        if s.get("device") == here:
            seen.setdefault((s["family"], round(float(s["width"]), 6)), []).extend(
                r["epoch_s"] for r in run.metrics() if r.get("epoch_s")
            )
    out = {}
    for it in items:
        k = (it.family, round(it.width, 6))
        if k in out:
            continue
        if seen.get(k):
            out[k] = statistics.median(seen[k])
        elif probe:
            x, y = training_data(640)
            ips = engine_speed(x, y, device=str(resolve_device(device)), family=it.family, width=it.width)["img_per_s"]
            out[k] = n_train / ips + n_public / (3 * ips)
        else:
            out[k] = None
    return out


# --------------------------------------------------------------------------------------------------- progress


def lane_finish(estimates: list[float], workers: int) -> list[tuple[int, float]]:
    """Each waiting run's (lane, finish time in seconds from now) when ``workers`` lanes take the runs in plan
    order, each the next free lane: what the study's workers do."""
    free = [0.0] * workers
    out = []
    for est in estimates:
        lane = min(range(workers), key=free.__getitem__)
        free[lane] += est
        out.append((lane, free[lane]))
    return out


def progress(folder: Path = DEFAULT_DIR, probe: bool = False, device: str = "auto", workers: int | None = None) -> dict:
    """The study's state, run by run, for the pages and ``--status``: done / training / resumable / waiting,
    epochs done, estimated seconds left (from this device's measured epochs; None where none is known).
    ``estimate_left_s`` adds the runs up (one lane); ``wall_left_s`` is the time to the last run's end when
    ``workers`` lanes share them as the study's workers do (default: as many lanes as runs training now, at
    least one). ``trained_s``: the seconds a run has trained so far (its epochs' time, evaluation included) on
    its ``device``; ``trained_s_by_device`` adds them up per device."""
    if not (Path(folder) / "plan.json").is_file():
        raise FerError(
            f"{folder}: no study here yet (no plan.json); start one: python -m fer_core study families --out {folder}"
        )
    protocol, items = read_plan(folder)
    found, notes = match_runs(folder, protocol, items)
    sizes = _data_sizes(found)
    secs = epoch_seconds(items, found, protocol, *sizes, device=device, probe=probe)
    rows = []
    for it in items:
        run = found.get(it.key(protocol))
        metrics = run.metrics() if run else []  # read once: the Train page asks every 10 seconds
        state, done = run_state(run, metrics)
        per = secs.get((it.family, round(it.width, 6)))
        left = 0.0 if state == "done" else (per * (it.epochs - done) if per else None)
        s = run.summary() if run else {}
        spent = sum(r.get("epoch_s") or 0.0 for r in metrics)
        rows.append(
            {
                "run": it.label(),
                "family": it.family,
                "width": it.width,
                "params": it.params,
                "seed": it.seed,
                "phase": it.phase,
                "state": state,
                "epochs_done": done,
                "epochs": it.epochs,
                "recipe": it.recipe,
                "estimate_left_s": None if left is None else round(left),
                "private_acc": s.get("private_acc"),
                "trained_s": round(spent, 1) if run else None,  # its epochs' seconds, on its own device
                "device": s.get("device"),
                "run_id": run.run_id if run else None,
                "source": None if run is None else "reference" if run.path.parent == reference_dir() else "study",
                "why": it.why,
            }
        )
    known = [r["estimate_left_s"] for r in rows if r["estimate_left_s"] is not None]
    lanes = workers or max(1, sum(r["state"] == "training" for r in rows))
    ends = lane_finish([r["estimate_left_s"] for r in rows if r["state"] != "done" and r["estimate_left_s"]], lanes)
    return {
        "folder": str(folder),
        "protocol": protocol,
        "runs": rows,
        "done": sum(r["state"] == "done" for r in rows),
        "total": len(rows),
        "estimate_left_s": sum(known),
        "workers": lanes,
        "wall_left_s": max((end for _, end in ends), default=0.0),
        "unknown_estimates": len(rows) - len(known),
        "trained_s_by_device": _seconds_by_device(rows),
        "check": protocol_check(rows),
        "notes": notes,
    }


def _seconds_by_device(rows: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rows:
        if r["trained_s"]:
            key = r["device"] or "unknown device"
            out[key] = round(out.get(key, 0.0) + r["trained_s"], 1)
    return out


def trained_text(by_device: dict[str, float]) -> str:
    """``{"cpu": 91080.0, ...}`` as "25h18 on cpu, ..." (the pages and ``--status`` say it alike)."""
    return ", ".join(f"{fmt_seconds(s)} on {d}" for d, s in by_device.items())


def _data_sizes(found: dict) -> tuple[int, int]:
    for run in found.values():
        sizes = run.summary().get("data_sizes")
        if sizes:
            return int(sizes["train"]), int(sizes["public"])
    return 28_709, 3_589  # FER2013's


def protocol_check(rows: list[dict]) -> list[dict]:
    """The check points: the study's mean +- sd over its completed seeds against the 95-epoch reference runs of
    the same network (``results/reference``). Passed when the mean falls short of the reference's mean by no
    more than one of the reference's standard deviations."""
    ref = _reference_accuracies()
    out = []
    for fam, width in sorted({(r["family"], r["width"]) for r in rows if r["phase"] == "check"}):
        ours = [r["private_acc"] for r in rows if (r["family"], r["width"]) == (fam, width) and r["phase"] == "check"]
        done = [a for a in ours if isinstance(a, float)]
        theirs = ref.get((fam, round(width, 6)), [])
        row = {"family": fam, "width": width, "runs": len(done), "planned": len(ours), "reference_runs": len(theirs)}
        if done:
            row["mean"], row["sd"] = statistics.mean(done), statistics.stdev(done) if len(done) > 1 else None
        if len(theirs) > 1:
            row["reference_mean"], row["reference_sd"] = statistics.mean(theirs), statistics.stdev(theirs)
        if done and len(theirs) > 1:
            row["short_by"] = row["reference_mean"] - row["mean"]
            row["verdict"] = (
                ("passed" if row["short_by"] <= row["reference_sd"] else "failed")
                if len(done) == len(ours)
                else "so far " + ("within" if row["short_by"] <= row["reference_sd"] else "outside") + " one sd"
            )
        out.append(row)
    return out


def _reference_accuracies() -> dict:
    out: dict[tuple, list[float]] = {}
    d = reference_dir()
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        s = read_json(p / "summary.json") or {}
        if _plain(s) and s.get("recipe", "seed") == "seed" and isinstance(s.get("private_acc"), float):
            if s.get("epochs") == PROTOCOL["epochs"]:
                out.setdefault((s["family"], round(float(s["width"]), 6)), []).append(s["private_acc"])
    return out


# --------------------------------------------------------------------------------------------------- training


def run_config(it: Item, protocol: dict, data: str | None, device: str, threads: int | None) -> RunConfig:
    cfg = apply_recipe(RunConfig(), it.recipe)
    cfg.model.family, cfg.model.width = it.family, it.width
    cfg.train.seed, cfg.train.epochs, cfg.train.device, cfg.train.threads = it.seed, it.epochs, device, threads
    cfg.train.checkpoint_every = 1
    # where the data lies is this machine's business (the study passes it in); data_fingerprint names it
    cfg.data.data = data if data and (data == "synthetic" or data.startswith("synthetic:")) else None
    cfg.data.limit = protocol.get("data_limit")
    return cfg.validate()


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    h, m = divmod(int(seconds) // 60, 60)
    return f"{h}h{m:02d}" if h else f"{m} min"


def plan_digest(protocol: dict, items: list[Item]) -> str:
    body = json.dumps([protocol, [it.key(protocol) for it in items]], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]
