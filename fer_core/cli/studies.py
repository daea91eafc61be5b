"""`reference`, `study beyond` and `bench`: the prepared studies and the benchmark."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fer_core.cli.common import add_ray_arguments, backend_from, base_config, number_list, print_json
from fer_core.common import FerError
from fer_core.models import list_models
from fer_core.store.files import atomic_write_json
from fer_core.store.runs import RESULTS_DIR, runs_dir
from fer_core.studies.bench import LANE_FAMILIES, ray_overhead, run_bench, study_lanes
from fer_core.studies.beyond import run_beyond
from fer_core.studies.families import DEFAULT_DIR, fmt_seconds, progress, trained_text
from fer_core.studies.live_bench import live_modes_bench
from fer_core.studies.reference import run_reference, write_record
from fer_core.studies.serve_bench import live_soak, serve_bench
from fer_core.studies.study_run import run_study
from fer_core.studies.train_bench import lever_speeds
from fer_core.training.config import add_arguments, apply_arguments


def _study_done(record: dict, args) -> int:
    """Write and print a study's record; exit 1 if any of its trainings failed."""
    if args.record:
        write_record(record, Path(args.record))
    if args.json:
        print_json(record)
    return 0 if all(r.get("exit") == 0 for r in record.get("results", [])) else 1


def cmd_reference(args) -> int:
    record = run_reference(
        args.epochs,
        args.fit_in,
        args.parallel,
        apply_arguments(base_config(args), args),
        better=not args.no_better,
        dry_run=args.dry_run,
        skip_done=Path(args.skip_done) if args.skip_done else None,
        out=args.out,
        backend=backend_from(args),
    )
    return _study_done(record, args)


def cmd_study(args) -> int:
    work = Path(args.work) if args.work else runs_dir() / "study-beyond"
    record = run_beyond(
        apply_arguments(base_config(args), args),
        out=Path(args.out),
        work=work,
        fit_in=args.fit_in,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        ref_epochs=args.reference_epochs,
        reference_from=Path(args.reference_from) if args.reference_from else None,
        parallel=args.parallel,
        log=Path(args.log) if args.log else work / "progress.log",
        dry_run=args.dry_run,
        backend=backend_from(args),
    )
    return _study_done(record, args)


def cmd_families(args) -> int:
    if args.threads is not None and args.threads < 1:
        raise FerError(f"--threads {args.threads}: at least 1")
    if args.hours is not None and not args.hours > 0:
        raise FerError(f"--hours {args.hours}: a positive number of hours")
    if args.workers is not None and args.workers < 1:
        raise FerError(f"--workers {args.workers}: at least 1")
    if args.status:
        doc = progress(Path(args.out), workers=args.workers)
    else:
        doc = run_study(
            Path(args.out), args.hours, args.data, args.device, args.threads, args.dry_run,
            workers=args.workers or 1, lane=args.lane, until=args.until,
        )  # fmt: skip
    if args.json:
        print_json(doc)
        return 0
    print(progress_text(doc))
    return 0


def progress_text(doc: dict) -> str:
    """A study's progress as the terminal shows it (``--status``)."""
    lanes = doc["workers"]
    left = (
        f"about {fmt_seconds(doc['wall_left_s'])} left with {lanes} worker{'s' if lanes > 1 else ''} "
        f"({fmt_seconds(doc['estimate_left_s'])} of training in all)"
    )
    if doc["unknown_estimates"]:
        left += f", {doc['unknown_estimates']} runs not yet measured here"
    lines = [f"{doc['folder']}: {doc['done']}/{doc['total']} runs done, protocol {doc['protocol']['recipe']} "
             f"x {doc['protocol']['epochs']} epochs; {left}"]  # fmt: skip
    for r in doc["runs"]:
        acc = f"{r['private_acc']:.4f}" if isinstance(r["private_acc"], float) else ""
        spent = f"{fmt_seconds(r['trained_s']):>6} trained" if r["trained_s"] else ""
        if spent and r["device"] and r["device"] != "cpu":
            spent += f" on {r['device']}"
        if r["estimate_left_s"] is not None and r["state"] != "done":
            spent = ", ".join(filter(None, [spent, f"{r['estimate_left_s'] / 60:.0f} min left"]))
        lines.append(
            f"  {r['run']:<24} {r['params']:>9,} {r['phase']:<9} {r['state']:<10} "
            f"{r['epochs_done']:>3}/{r['epochs']:<3} {acc:>7}  {spent}".rstrip()
        )
    if doc.get("trained_s_by_device"):
        lines.append(f"  trained so far (epoch time, evaluation included): {trained_text(doc['trained_s_by_device'])}")
    for c in doc["check"]:
        if "mean" in c and "reference_mean" in c:
            sd = f" ± {c['sd']:.4f}" if c.get("sd") else ""
            lines.append(
                f"  check {c['family']} w{c['width']:g}: {c['mean']:.4f}{sd} ({c['runs']}/{c['planned']} seeds) vs "
                f"95-epoch reference {c['reference_mean']:.4f} ± {c['reference_sd']:.4f}: {c['verdict']}"
            )
    lines += [f"  note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def _bench_file(args, name: str, doc: dict, line) -> int:
    """Write one of bench's own JSON files (``--out``, else results/bench) and print it, or ``line(file)``."""
    out = Path(args.out) if args.out else RESULTS_DIR / "bench"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / name, doc)
    if args.json:
        print_json(doc)
    else:
        print(line(out / name))
    return 0


def cmd_bench(args) -> int:
    if args.soak:
        doc = live_soak(args.soak, say=(lambda *a: None) if args.json else print)
        return _bench_file(args, "soak.json", doc, lambda file: (
            f"live soak, {doc['soak_frames']:,} frames at {doc['soak_fps']} fps ({doc['soak']}): memory "
            f"{doc['soak_start']['rss_mb']} -> {doc['soak_end']['rss_mb']} MB ({doc['soak_rss_growth_mb']:+} MB), "
            f"threads {doc['soak_start']['threads']} -> {doc['soak_end']['threads']}; goal (< 20 MB, no new "
            f"threads) {'met' if doc['soak_goal_met'] else 'NOT met'}; written: {file}"
        ))  # fmt: skip
    if args.serve:
        sessions = [int(n) for n in number_list(args.sessions)] if args.sessions else None
        doc = serve_bench(args.cycles, sessions, args.out, args.json)
        if args.json:
            print_json(doc)
        return 0
    if args.live_modes:
        doc = live_modes_bench(args.seconds, args.out, args.json)
        if args.json:
            print_json(doc)
        return 0
    if args.lanes:
        rows = study_lanes(args.images, (lambda *a: None) if args.json else print, args.families or LANE_FAMILIES)
        doc = {"study_lanes": rows, "train_images": args.images, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        return _bench_file(args, "lanes.json", doc, lambda f: f"written: {f}" if rows else "one core here: no lanes")
    known = list_models()
    unknown = [f for f in args.families or [] if f not in known]
    if unknown:
        raise FerError(f"--families: no family named {', '.join(unknown)} (there are: {', '.join(known)})")
    if args.levers:
        say = (lambda *a: None) if args.json else print
        say(f"the engine's levers, one at a time: one thread, one process per configuration, {args.rounds} rounds")
        doc = lever_speeds(args.images, args.rounds, families=args.families, say=say)
        doc.update(train_images=args.images, when=time.strftime("%Y-%m-%d %H:%M:%S"))
        return _bench_file(args, "levers.json", doc, lambda f: f"written: {f}")
    if args.ray:
        doc = ray_overhead(out_dir=args.out, quiet=args.json)
        if args.json:
            print_json(doc)
        return 0

    doc = run_bench(
        images=args.images,
        frames=args.frames,
        out_dir=args.out,
        quiet=args.json,
        device=args.device,
        face_repeats=args.face_repeats,
        families=args.families,
    )
    if args.json:
        print_json(doc)
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("reference", help="the reference study (seed report rerun), sized to a time window")
    s.add_argument("--epochs", type=int, default=100, help="epochs per run (default: 100)")
    s.add_argument(
        "--fit-in", type=float, default=None, metavar="SECONDS", help="lower the epochs (alike for all) to fit"
    )
    s.add_argument("--parallel", type=int, default=8, help="runs at once (default: 8)")
    add_ray_arguments(s)
    s.add_argument("--no-better", action="store_true", help="skip the two better-recipe runs")
    s.add_argument("--skip-done", default=None, metavar="FOLDER", help="train only the runs FOLDER lacks")
    s.add_argument("--dry-run", action="store_true", help="print the plan only")
    s.add_argument("--record", default=None, help="write the study's record (epochs, timings) to this JSON file")
    s.add_argument("--config", default=None, metavar="FILE", help="a RunConfig JSON every run starts from")
    add_arguments(s, exclude=("train.seed", "train.epochs"))
    s.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS or results/runs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_reference)

    study = sub.add_parser("study", help="a prepared study in one command: beyond (GPU), families (resumable)")
    studies = study.add_subparsers(dest="name", required=True)
    s = studies.add_parser(
        "families",
        help="the four families at 2e4-1e5 parameters on a checked short protocol: resumes anywhere (--hours H)",
    )
    s.add_argument("--out", default=str(DEFAULT_DIR), help="the study folder, plan.json in it (default: %(default)s)")
    s.add_argument("--hours", type=float, default=None, help="time budget: stop after the epoch that reaches it")
    s.add_argument("--data", default=None, help="FER2013 (default: $FER_DATA, data/, else synthetic)")
    s.add_argument("--device", default="auto", help="auto (CUDA, then Apple's MPS, then the CPU), cpu, mps, cuda")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs trained at once, each in its own process with --threads threads (default: one; "
        "with more, --threads defaults to the cores shared out); with --status, the lanes its time left assumes "
        "(default: as many as runs training now)",
    )
    s.add_argument("--lane", type=int, default=0, help=argparse.SUPPRESS)  # a worker started by --workers
    s.add_argument("--until", type=float, default=None, help=argparse.SUPPRESS)  # its parent's deadline
    s.add_argument("--dry-run", action="store_true", help="print the plan with estimates only")
    s.add_argument("--status", action="store_true", help="the study's progress (no training, no measuring)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_families)
    s = studies.add_parser("beyond", help="teacher, distilled students and the reference gaps in one GPU call")
    s.add_argument("--fit-in", type=float, default=None, metavar="SECONDS", help="scale the epochs to fit (e.g. 540)")
    s.add_argument("--teacher-epochs", type=int, default=300, help="the teacher's epochs before scaling (default: 300)")
    s.add_argument("--student-epochs", type=int, default=200, help="students' epochs before scaling (default: 200)")
    s.add_argument("--reference-epochs", type=int, default=None, help="(default: the reference runs' own, else 95)")
    s.add_argument(
        "--reference-from", default=None, metavar="FOLDER", help="reference runs already done (default: --out)"
    )
    s.add_argument(
        "--parallel", type=int, default=None, help="runs at once per lane (default: all; on the CPU one per core)"
    )
    add_ray_arguments(s)
    s.add_argument("--out", default="results/reference", help="where finished runs are exported (default: %(default)s)")
    s.add_argument("--work", default=None, help="where runs train (default: $FER_RUNS/study-beyond)")
    s.add_argument("--log", default=None, help="progress log file (default: WORK/progress.log)")
    s.add_argument("--record", default=None, help="write the study's record (plan, epochs, timings) to this JSON")
    s.add_argument("--dry-run", action="store_true", help="print the plan only")
    s.add_argument("--config", default=None, metavar="FILE", help="a RunConfig JSON every run starts from")
    add_arguments(s, exclude=("train.seed", "train.epochs"))  # the study's recipes set the recipe fields
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("bench", help="training throughput vs a naive pipeline, and frame latency")
    s.add_argument("--images", type=int, default=2560, help="training images per pipeline (default: 2560)")
    s.add_argument("--frames", type=int, default=50, help="frames for the latency median (default: 50)")
    s.add_argument(
        "--face-repeats", type=int, default=300, help="one-face timings per model and runtime (default: 300)"
    )
    s.add_argument("--out", default=None, help="folder for the JSON (default: results/bench)")
    s.add_argument("--device", default="cpu", help="cpu | cuda: where both training pipelines run (default: cpu)")
    s.add_argument(
        "--ray", action="store_true", help="instead: a local Ray's start time and its per-run overhead vs the queue"
    )
    s.add_argument(
        "--lanes",
        action="store_true",
        help="instead: study families --workers on this CPU: one-thread processes, one per core, against one process",
    )
    s.add_argument(
        "--levers",
        action="store_true",
        help="instead: the engine as shipped against the same with one lever put back "
        "(huge pages, PyTorch's layers, unfused BatchNorm)",
    )
    s.add_argument(
        "--rounds", type=int, default=2, help="--levers: rounds, each configuration once a round (default: 2)"
    )
    s.add_argument(
        "--families",
        nargs="+",
        metavar="FAMILY",
        help="time only these families: at the seed size, as study lanes, with --levers (default: every "
        "registered family; as lanes, mobilenet and mobilenetv2)",
    )
    s.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=20_000,
        default=None,
        metavar="FRAMES",
        help="instead: the live processor over FRAMES frames (default 20000): memory and threads, start vs end",
    )
    s.add_argument(
        "--serve",
        action="store_true",
        help="instead: the dashboard in a real browser: live video on/off --cycles times, then --sessions at once",
    )
    s.add_argument(
        "--live-modes",
        action="store_true",
        help="instead: live video in the browser against on the server, side by side (fps, server CPU)",
    )
    s.add_argument("--seconds", type=float, default=20, help="--live-modes: seconds measured per mode (default: 20)")
    s.add_argument("--cycles", type=int, default=20, help="--serve: live video starts and stops (default: 20)")
    s.add_argument("--sessions", default=None, help="--serve: browser sessions at once, e.g. 1,4,8 (the default)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)
