"""The "beyond the seed" study: one command that, in one call on one GPU, completes the reference study and
trains a strong teacher and the students distilled from it, exporting every finished run as it finishes.

``python -m fer_core study beyond --device cuda --fit-in 540 --data PATH`` runs two lanes at once:

- lane 1: the runs the reference study still lacks (compared with ``--reference-from``, by default the
  output folder), at the reference study's own epoch count, so they sit beside the shipped runs;
- lane 2, in two phases: the teacher (the HW3-size CNN, ``strong`` recipe, a long schedule), then, once it
  is done, the students distilled from it (``distill`` recipe): MobileNetV2s at <= 110k and <= 60k parameters
  (the goals), the seed MobileNet, the largest MobileNet whose shipped weights file fits 225,000 bytes,
  MobileNets at ~5e4 and ~2e4 parameters, and a ~1e5 CNN;
- lowest priority, beside lane 1: the newer contenders (MobileNetV2- and ShuffleNetV2-style, 5 budgets x 1 seed,
  and 2 more seeds at ~1e5) at the reference study's epochs and recipe, so they land on the same scatter; those
  the CPU study (``results/cpu-study``) finished on the same protocol are not trained again. They start last
  and are the first dropped when ``--fit-in`` says the window is too short for them.

With ``--fit-in`` every configuration first trains 3 epochs all at once (under full load; with ``--parallel N``,
2N at a time: both lanes' load); the teacher and student epochs are then scaled down together, with a 0.7
margin, until both phases fit. On the CPU ``--parallel`` defaults to one run per core and lane. The most valuable
students start first when ``--parallel`` is lower than their number. Finished runs are exported to the
output folder at once (fp16 weights, lineage rewritten to run ids), so a cut keeps everything that
finished, and the next call trains only what the output folder lacks. A progress log is written to
``--log``. Nothing here imports streamlit, plotly or Ray: it runs on a bare GPU machine.
"""

from __future__ import annotations

import io
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from fer_core.common import NUM_CLASSES, FerError
from fer_core.jobs.queue import Job, run_configs
from fer_core.models import count_params, create_model, solve_width, widest_within
from fer_core.models.stats import state_dict_half
from fer_core.store.files import atomic_torch_save, read_json, weights_payload
from fer_core.store.runs import Run
from fer_core.studies.families import DEFAULT_DIR as CPU_STUDY_DIR
from fer_core.studies.reference import SEED_MOBILENET_PARAMS, calibrate, export_run, study_configs
from fer_core.studies.reference import plan as reference_plan
from fer_core.training.config import RunConfig
from fer_core.training.device import cpu_cores, resolve_device

COURSE_BYTES = 225_000  # the course's size limit for a shipped model
TEACHER = {"family": "cnn", "width": 1.0, "seed": 0, "recipe": "strong", "role": "teacher"}


def largest_width_under(family: str, limit_bytes: int = COURSE_BYTES) -> float:
    """The largest width (3 significant digits) whose fp16 weights file, as ``export`` writes it, fits."""

    def size(width: float) -> int:
        model = create_model(family, width)
        payload = weights_payload(
            state_dict_half(model.state_dict()),
            {"family": family, "width": width, "num_classes": NUM_CLASSES, "dropout": 0.5},
            epoch=0,
            metric={"public_acc": 0.0},
            run_id=f"{family}-w{width:g}-s0-20260101-000000-abcd",
            weights="raw",
        )
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.tell()

    lo = solve_width(family, limit_bytes / 4)[0]  # surely under: a quarter of the bytes as parameters
    if size(lo) > limit_bytes:
        raise FerError(f"no {family} fits in {limit_bytes:,} bytes")
    hi = lo * 2
    while size(float(f"{hi:.3g}")) <= limit_bytes:
        lo, hi = float(f"{hi:.3g}"), hi * 2
    while hi / lo > 1.002:  # bisect down to the 3-significant-digit grid of widths
        mid = float(f"{(lo * hi) ** 0.5:.3g}")
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if size(mid) <= limit_bytes else (lo, mid)
    return lo


#: The newer families, at five budgets from 2e4 to 1e6 parameters (the seed MobileNet's size among them).
CONTENDERS = ("mobilenetv2", "shufflenetv2")
CONTENDER_BUDGETS = [2e4, 5e4, SEED_MOBILENET_PARAMS, 3e5, 1e6]


def contenders() -> list[dict]:
    """The contender lane: each newer family at each budget, seed 0, then seeds 1 and 2 at the seed MobileNet's
    size (the seed spread the CPU study's "seeds" phase asks for, hours a run there), the reference protocol."""
    rows = [(f, b, 0) for f in CONTENDERS for b in CONTENDER_BUDGETS]
    rows += [(f, SEED_MOBILENET_PARAMS, s) for s in (1, 2) for f in CONTENDERS]
    return [
        {"family": f, "width": solve_width(f, b)[0], "seed": s, "recipe": "seed", "role": "contender"}
        for f, b, s in rows
    ]


#: The goals a distilled student is trained for (parameters at most): the free `fer` package's mini-Xception
#: level at <= 60k, the course's second-ranked student at <= 110k (issue goals, REPORT "Distillation")
STUDENT_BUDGETS = (60_000, 110_000)


def students() -> list[dict]:
    """The distilled students, most valuable first (the order they start in when they must queue): first the
    MobileNetV2s aimed at the goals at <= 110k (at the CPU study's width, beside its run from scratch) and <= 60k
    (the widest that fits), the family that won at ~1e5 on the CPU; then the seed network and its relatives."""
    fit = largest_width_under("mobilenet")
    rows = [
        {"family": "mobilenetv2", "width": 0.561, "seed": 0, "why": "<= 110k: the CPU study's ~1e5 MobileNetV2"},
        {
            "family": "mobilenetv2",
            "width": widest_within("mobilenetv2", STUDENT_BUDGETS[0]),
            "seed": 0,
            "why": f"<= {STUDENT_BUDGETS[0]:,} parameters: the widest MobileNetV2",
        },
        {"family": "mobilenet", "width": 1.0, "seed": 0, "why": "the seed network, distilled"},
        {"family": "mobilenet", "width": fit, "seed": 0, "why": f"largest MobileNet within {COURSE_BYTES:,} bytes"},
        {"family": "mobilenet", "width": solve_width("mobilenet", 5e4)[0], "seed": 0, "why": "~5e4 parameters"},
        {"family": "mobilenet", "width": solve_width("mobilenet", 2e4)[0], "seed": 0, "why": "~2e4 parameters"},
        {
            "family": "cnn",
            "width": solve_width("cnn", SEED_MOBILENET_PARAMS)[0],
            "seed": 0,
            "why": "a CNN student matched to the seed MobileNet",
        },
    ]
    return [{**r, "recipe": "distill", "role": "student"} for r in rows]


def _key(family: str, width: float, seed: int, recipe: str, distilled: bool) -> tuple:
    return (family, round(float(width), 6), int(seed), recipe, bool(distilled))


def _item_key(it: dict) -> tuple:
    return _key(it["family"], it["width"], it["seed"], it["recipe"], it["role"] == "student")


def completed(folder: Path) -> dict[tuple, Path]:
    """Completed runs in ``folder`` by (family, width, seed, recipe, distilled)."""
    out = {}
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        s = read_json(p / "summary.json") or {}
        if s.get("status") == "completed" and not s.get("derived_from"):  # trained runs, not their ONNX variants
            out[_key(s["family"], s["width"], s["seed"], s.get("recipe", "seed"), s.get("distilled", False))] = p
    return out


def reference_epochs(folder: Path) -> int | None:
    """The epoch count of the reference runs already in ``folder`` (the study's runs must match it)."""
    summaries = [read_json(p / "summary.json") or {} for p in Path(folder).iterdir()] if Path(folder).is_dir() else []
    counts = {
        s["epochs"]
        for s in summaries
        if s.get("recipe") in ("seed", "better") and not s.get("distilled") and not s.get("derived_from")
    }
    if len(counts) > 1:
        raise FerError(
            f"{folder} holds reference runs of several epoch counts {sorted(counts)}: give --reference-epochs"
        )
    return counts.pop() if counts else None


def plan(out: Path, reference_from: Path | None = None, study_from: Path | None = None, epochs: int | None = None):
    """What the study still has to train: reference runs (lane 1), the teacher and its students (lane 2), the
    contenders; a contender the CPU study (``study_from``) completed on the same protocol (``epochs``) is done."""
    have = completed(out)
    ref_have = {**completed(reference_from), **have} if reference_from else have
    if study_from is not None and epochs:
        for key, p in completed(study_from).items():
            if (read_json(p / "summary.json") or {}).get("epochs") == epochs:
                ref_have.setdefault(key, p)
    refs = [
        {**it, "role": "reference"}
        for it in reference_plan(better=True)
        if _key(it["family"], it["width"], it["seed"], it["recipe"], False) not in ref_have
    ]
    teacher_done = have.get(_item_key(TEACHER))
    return {
        "reference": refs,
        "teacher": None if teacher_done else dict(TEACHER),
        "teacher_run": str(teacher_done) if teacher_done else None,
        "students": [s for s in students() if _item_key(s) not in have],
        "contenders": [c for c in contenders() if _item_key(c) not in ref_have],
    }


def _configs(items: list[dict], base: RunConfig, epochs: int, teacher: str | None = None) -> list[RunConfig]:
    """The items as configs (each with its own recipe); students learn from ``teacher``."""
    cfgs = study_configs(items, epochs, base)
    for cfg, it in zip(cfgs, items):
        cfg.distill.teachers = [teacher] if teacher and it["role"] == "student" else []
    return cfgs


def _stand_in_teacher(folder: Path) -> str:
    """An untrained teacher-sized weights file: students' calibration epochs cost what the real ones will."""
    model = create_model(TEACHER["family"], TEACHER["width"])
    path = Path(folder) / "stand-in-teacher.pt"
    atomic_torch_save(
        path, weights_payload(model.state_dict(), {"family": TEACHER["family"], "width": TEACHER["width"]})
    )
    return str(path)


class _Log:
    """Progress lines with the elapsed time, to stderr and to a file."""

    def __init__(self, path: Path | None):
        self.t0 = time.time()
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, *parts) -> None:
        line = f"[{time.time() - self.t0:7.1f} s] " + " ".join(str(p) for p in parts)
        with self.lock:
            print(line, file=sys.stderr, flush=True)
            if self.path:
                with open(self.path, "a") as f:
                    f.write(line + "\n")


def run_beyond(
    base: RunConfig,
    out: Path,
    work: Path,
    fit_in: float | None = None,
    teacher_epochs: int = 300,
    student_epochs: int = 200,
    ref_epochs: int | None = None,
    reference_from: Path | None = None,
    parallel: int | None = None,
    log: Path | None = None,
    dry_run: bool = False,
    backend: dict | None = None,
) -> dict:
    """Run the study (see the module's docstring); returns its record (plan, epochs, timings, results).

    With ``backend`` (a Ray spec) every training is a Ray task; ``fit_in`` is then refused (it times this
    machine's device)."""
    if fit_in and backend:
        raise FerError("--fit-in times the runs on this machine's device; on a Ray cluster give the epochs instead")
    out, work = Path(out), Path(work)
    say = _Log(log)
    ref_epochs = ref_epochs or reference_epochs(reference_from or out) or 95
    todo = plan(out, reference_from, CPU_STUDY_DIR, ref_epochs)
    n_lane2 = (1 if todo["teacher"] else 0) + len(todo["students"]) + len(todo["contenders"])
    record: dict = {"plan": todo, "fit_in_s": fit_in, "reference_epochs": ref_epochs}
    say(
        f"study beyond: {len(todo['reference'])} reference runs ({ref_epochs} epochs), "
        f"{'a teacher and ' if todo['teacher'] else ''}{len(todo['students'])} students, "
        f"{len(todo['contenders'])} contenders; into {out}"
    )
    for it in (
        todo["reference"] + ([todo["teacher"]] if todo["teacher"] else []) + todo["students"] + todo["contenders"]
    ):
        say(
            f"  {it['role']:<9} {it['family']:<12} w{it['width']:<6g} {count_params(it['family'], it['width']):>10,} "
            f"params  seed {it['seed']}  {it['recipe']}  {it.get('why', '')}"
        )
    if not todo["reference"] and n_lane2 == 0:
        say("nothing to do: the output folder holds every planned run")
        return record
    if dry_run:
        return record
    if parallel is None and backend is None and resolve_device(base.train.device).type == "cpu":
        # every run at once suits a GPU; on the CPU each run is a process with its own memory, and the 23-run
        # plan at once ran a 24 GiB machine out of memory beside one training: one run per core and lane instead
        parallel = max(1, cpu_cores() // (base.train.threads or 1))
        say(f"on the CPU: {parallel} runs at once per lane ({cpu_cores()} cores; --parallel sets it)")
    t0 = time.time()
    if fit_in:
        with tempfile.TemporaryDirectory() as tmp:
            stand_in = _stand_in_teacher(Path(tmp))
            lane1 = _configs(todo["reference"], base, ref_epochs)
            teacher_cfg = _configs([todo["teacher"]], base, teacher_epochs) if todo["teacher"] else []
            student_cfgs = _configs(todo["students"], base, student_epochs, stand_in)
            contender_cfgs = _configs(todo["contenders"], base, ref_epochs)
            cfgs = lane1 + teacher_cfg + student_cfgs + contender_cfgs
            at_once = min(len(cfgs), 2 * parallel) if parallel else len(cfgs)  # both lanes' load
            cal = calibrate(cfgs, at_once)
        times = cal["epoch_s"]
        t_ref = max((t or 0) for t in times[: len(lane1)]) if lane1 else 0.0
        t_teacher = (times[len(lane1)] or 0) if teacher_cfg else 0.0
        n_first = len(lane1) + len(teacher_cfg)
        t_student = max((t or 0) for t in times[n_first : n_first + len(student_cfgs)]) if student_cfgs else 0.0
        t_contender = max((t or 0) for t in times[n_first + len(student_cfgs) :]) if contender_cfgs else 0.0
        left = fit_in - cal["wall_s"] - 2 * cal["overhead_s"]  # two phases pay start-up once each
        need = teacher_epochs * t_teacher + student_epochs * t_student
        scale = min(1.0, 0.7 * left / need) if need > 0 else 1.0
        teacher_epochs = max(1, math.floor(teacher_epochs * scale))
        student_epochs = max(1, math.floor(student_epochs * scale))
        record["calibration"] = cal
        say(
            f"calibration ({cal['wall_s']:.0f} s, {len(cfgs)} runs, {at_once} at a time): epoch {t_ref:.2f} s "
            f"reference, {t_teacher:.2f} s teacher, {t_student:.2f} s student; {left:.0f} s left -> teacher "
            f"{teacher_epochs} epochs, students {student_epochs} (x{scale:.2f})"
        )
        if lane1 and ref_epochs * t_ref > 0.9 * left:
            say(f"warning: {ref_epochs} reference epochs take about {ref_epochs * t_ref:.0f} s: they may be cut")
        if contender_cfgs and ref_epochs * t_contender > 0.9 * left:
            alone = not (lane1 or teacher_cfg or student_cfgs)  # then a later call with this window drops them again
            need_s = cal["wall_s"] + 2 * cal["overhead_s"] + ref_epochs * t_contender / 0.9
            later = f"they need --fit-in {math.ceil(need_s)} or more" if alone else "a later call trains them"
            say(
                f"contenders dropped: {ref_epochs} epochs take about {ref_epochs * t_contender:.0f} s of the "
                f"{left:.0f} s left (the lowest-priority lane; {later})"
            )
            record["contenders_dropped"] = [c["family"] + f" w{c['width']:g}" for c in todo["contenders"]]
            todo = {**todo, "contenders": []}  # the record keeps the plan as it was
    record.update(teacher_epochs=teacher_epochs, student_epochs=student_epochs)
    results: list[dict] = []
    lock = threading.Lock()

    def finished(job: Job) -> None:
        cfg: RunConfig = job.tag["config"]
        entry = {
            "family": cfg.model.family,
            "width": cfg.model.width,
            "seed": cfg.train.seed,
            "recipe": cfg.recipe,
            "exit": job.returncode,
            "run": Path(job.run_path).name if job.run_path else None,
        }
        s = read_json(Path(job.run_path) / "summary.json") if job.run_path else None
        if job.returncode == 0 and s:
            export_run(Run(Path(job.run_path)), out)
            entry.update(public_acc=s["public_acc"], private_acc=s["private_acc"], wall_s=s["wall_s"])
            say(
                f"done: {s['run_id']}: public {s['public_acc']:.4f} private {s['private_acc']:.4f} "
                f"({s.get('selected_weights')} weights, {s['wall_s']:.0f} s) -> exported"
            )
        else:
            say(f"FAILED ({job.returncode}): {' '.join(job.argv)}\n{job.stderr_tail}")
        with lock:
            results.append(entry)

    def lane1() -> None:  # the reference runs first, then the contenders: lowest priority when they queue
        cfgs = _configs(todo["reference"] + todo["contenders"], base, ref_epochs)
        if cfgs:
            run_configs(cfgs, parallel or len(cfgs), out=work, on_done=finished, backend=backend)

    ref_thread = threading.Thread(target=lane1, name="reference-lane")
    ref_thread.start()
    teacher = todo["teacher_run"]
    if todo["teacher"]:
        say(f"teacher: {teacher_epochs} epochs")
        teacher_cfgs = _configs([todo["teacher"]], base, teacher_epochs)
        job = run_configs(teacher_cfgs, 1, out=work, on_done=finished, backend=backend)[0]
        teacher = job.run_path if job.returncode == 0 else None
    record["teacher_s"] = round(time.time() - t0, 1)
    if teacher and todo["students"]:
        say(f"students: {len(todo['students'])}, {student_epochs} epochs, taught by {Path(teacher).name}")
        cfgs = _configs(todo["students"], base, student_epochs, str(teacher))
        run_configs(cfgs, parallel or len(cfgs), out=work, on_done=finished, backend=backend)
    elif todo["students"]:
        say("no teacher finished: the students were not trained")
    ref_thread.join()
    record["results"] = results
    record["wall_s"] = round(time.time() - t0, 1)
    ok = sum(r["exit"] == 0 for r in results)
    say(f"study beyond: {ok}/{len(results)} runs completed in {record['wall_s']:.0f} s")
    return record
