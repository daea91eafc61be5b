"""The ``python -m fer_core`` command line: the contract the dashboard and the checks rely on.

Every command that takes ``--json`` prints one JSON document on stdout. Errors caused by input go to
stderr as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import EMOTIONS
from .config import RECIPES, RunConfig, add_arguments, apply_arguments
from .errors import FerError


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _number_list(text: str) -> list[float]:
    return [_number(t) for t in text.split(",") if t.strip()]


# --------------------------------------------------------------------------------------------------- models


def cmd_models(args) -> int:
    from .models import PRESETS, count_params, list_models

    rows = []
    for name in list_models():
        rows.append({"name": name, "kind": "family", "width": 1.0, "params": count_params(name, 1.0)})
    for name, (family, width, what) in PRESETS.items():
        rows.append(
            {
                "name": name,
                "kind": "preset",
                "family": family,
                "width": width,
                "params": count_params(family, width),
                "about": what,
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':<16} {'kind':<7} {'width':>6} {'params':>11}  about")
    for r in rows:
        print(f"{r['name']:<16} {r['kind']:<7} {r['width']:>6g} {r['params']:>11,}  {r.get('about', '')}")
    print("\nAny width works: --width W, or --budget N to solve the width for N parameters.")
    return 0


def _width_from(args) -> tuple[float, float | None]:
    from .models import solve_width

    if args.budget is not None:
        w, _ = solve_width(args.model, args.budget)
        return w, args.budget
    return args.width, None


def cmd_describe(args) -> int:
    from .models import create_model
    from .models.stats import model_stats

    width, budget = _width_from(args)
    model = create_model(args.model, width)
    out = {"family": args.model, "width": width, "budget": budget, **model_stats(model), "architecture": str(model)}
    if args.json:
        _print_json(out)
        return 0
    print(out.pop("architecture"))
    print()
    for k, v in out.items():
        if v is not None:
            print(f"{k:>15}: {v:,}" if isinstance(v, int) else f"{k:>15}: {v}")
    print("\nstate_values counts BatchNorm running statistics too (the seed report's 109,761 for MobileNet).")
    return 0


# --------------------------------------------------------------------------------------------------- data


def cmd_status(args) -> int:
    from .status import data_status, device_status

    out = {"data": data_status(args.data), "device": device_status()}
    if args.json:
        _print_json(out)
        return 0
    d = out["data"]
    print(f"device: {out['device']['name']}")
    if not d["ok"]:
        print(f"data: error: {d['error']}")
    else:
        kind = "synthetic faces (NOT FER2013)" if d["synthetic"] else f"{d['data']} ({d['kind']}, {d['file']})"
        print(f"data: {kind}, " + ", ".join(f"{k} {v:,}" for k, v in d["sizes"].items()))
    return 0


def cmd_data(args) -> int:
    from .data import load, resolve_spec

    spec = resolve_spec(args.data)
    t = time.perf_counter()
    d = load(spec)
    desc = d.describe()
    desc["load_s"] = round(time.perf_counter() - t, 3)
    if args.json:
        _print_json(desc)
        return 0
    where = "built-in synthetic faces (NOT FER2013)" if d.synthetic else f"{d.kind} {d.path}"
    print(f"data: {d.name}  ({where})")
    print(f"fingerprint: {d.fingerprint}\n")
    print(f"{'split':<8}" + "".join(f"{e:>9}" for e in EMOTIONS) + f"{'total':>9}")
    for s, counts in desc["counts"].items():
        print(f"{s:<8}" + "".join(f"{c:>9}" for c in counts) + f"{sum(counts):>9}")
    for n in d.notes:
        print(f"note: {n}")
    return 0


# --------------------------------------------------------------------------------------------------- train


def _base_config(args) -> RunConfig:
    """The config a command starts from: ``--config FILE`` if given, else the defaults."""
    return RunConfig.from_file(args.config) if getattr(args, "config", None) else RunConfig()


def _train_config(args) -> RunConfig:
    """``train``'s config: --config FILE (or the defaults), the model flags, then every explicit flag over it."""
    cfg = _base_config(args)
    if args.model is None and not args.config and args.init:  # fine-tuning: the init run says what to build
        from .loading import load_model

        init = load_model(args.init)
        cfg.model.family, cfg.model.width = init.family, init.width
    elif args.model is None and not args.config:
        raise FerError("train needs --model (mobilenet or cnn), --config FILE, --init RUN or --resume RUN")
    if args.model is not None:
        cfg.model.family = args.model
    if args.width is not None:
        cfg.model.width, cfg.model.budget = args.width, None
    if args.budget is not None:
        from .models import solve_width

        cfg.model.width, _ = solve_width(cfg.model.family, args.budget)
        cfg.model.budget = args.budget
    return apply_arguments(cfg, args).validate()


class _Progress:
    """A one-line progress bar on stderr (one line per epoch when stderr is not a terminal)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, e: dict) -> None:
        if self.quiet:
            return
        if e["type"] == "start":
            src = "SYNTHETIC faces" if e.get("data_synthetic") else e.get("data")
            print(
                f"run {e['run_id']}: {e['family']} w{e['width']:g}, {e['params']:,} params, "
                f"data {src}, device {e['device']}",
                file=sys.stderr,
            )
        elif e["type"] == "epoch":
            n, total = e["epoch"], e["epochs"]
            bar = "#" * int(20 * n / total)
            eta = time.strftime("%H:%M:%S", time.gmtime(e["eta_s"] or 0))
            line = (
                f"epoch {n:>3}/{total} [{bar:<20}] loss {e['loss']:.3f} train {e['train_acc']:.3f} "
                f"public {e['public_acc']:.3f} {e['img_per_s'] or 0:,.0f} img/s ETA {eta}"
            )
            print(("\r" + line) if self.tty else line, end="" if self.tty and n < total else "\n", file=sys.stderr)
        elif e["type"] == "end" and e["status"] != "completed":
            print(f"\nrun {e['run_id']} {e['status']}: {e.get('error')}", file=sys.stderr)


def cmd_train(args) -> int:
    from .runs import Run, find_run, runs_dir
    from .train import fit, install_cancel_handler

    install_cancel_handler()
    if args.resume:
        run = find_run(args.resume)
        cfg = RunConfig.from_dict(run.config(), where=str(run.config_file))
        if run.summary().get("status") == "completed":
            raise FerError(f"run {run.run_id} already completed; nothing to resume")
        if not run.checkpoint_file.is_file():
            print(f"note: run {run.run_id} has no checkpoint; it starts again from epoch 1", file=sys.stderr)
    else:
        cfg = _train_config(args)
        if args.print_config:
            sys.stdout.write(cfg.to_json())
            return 0
        run = None
    root = Path(args.out) if args.out else runs_dir()
    summary = fit(cfg, on_event=_Progress(args.quiet), run=run, resume=bool(args.resume), root=root)
    run = run or Run(root / summary["run_id"])
    if args.json:
        _print_json(summary)
    else:
        if summary["status"] == "completed":
            print(
                f"public {summary['public_acc']:.4f}  private {summary['private_acc']:.4f}  "
                f"({summary['epochs_done']} epochs, best at {summary['best_epoch']} "
                f"[{summary.get('selected_weights', 'raw')} weights], {summary['wall_s']:.0f} s)",
                file=sys.stderr,
            )
        print(run.path)
    return 0 if summary["status"] == "completed" else 1


# --------------------------------------------------------------------------------------------------- sweep


def _add_ray_arguments(s) -> None:
    g = s.add_argument_group("Ray cluster (instead of this machine)")
    g.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="train on the Ray cluster at ADDRESS (ray://HOST:10001, HOST:6379, auto, or local for a new one here)",
    )
    g.add_argument("--gpu-fraction", type=float, default=0.0, help="GPU share per training (0.25: four per GPU)")
    g.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per training (default: 1)")
    g.add_argument("--retries", type=int, default=1, help="retries when a worker dies (default: 1)")


def _backend(args) -> dict | None:
    if not getattr(args, "ray", None):
        return None
    from .ray_backend import backend_spec

    address = None if args.ray == "local" else args.ray
    return backend_spec(address, args.gpu_fraction, args.cpus_per_run, args.retries)


def cmd_sweep(args) -> int:
    from .models import count_params
    from .planning import configs, plan

    families = [m.strip() for m in args.models.split(",") if m.strip()]
    items = plan(families, budgets=args.budgets, widths=args.widths, seeds=args.seeds)
    cfgs = configs(items, apply_arguments(_base_config(args), args))
    print(f"sweep: {len(cfgs)} runs, {args.parallel} at a time (recipe {cfgs[0].recipe})", file=sys.stderr)
    for c in cfgs:
        p = count_params(c.model.family, c.model.width)
        print(f"  {c.model.family:<10} width {c.model.width:<6g} {p:>10,} params  seed {c.train.seed}", file=sys.stderr)
    if args.dry_run:
        return 0
    from .jobs import run_configs

    quiet = args.parallel > 1 or args.quiet

    def done(job) -> None:
        c = job.tag["config"]
        print(
            f"done ({job.returncode}): {c.model.family} w{c.model.width:g} seed {c.train.seed} -> {job.run_path}",
            file=sys.stderr,
        )
        if job.returncode and job.stderr_tail:
            print("  " + job.stderr_tail.replace("\n", "\n  "), file=sys.stderr)

    jobs = run_configs(cfgs, args.parallel, out=args.out, quiet=quiet, on_done=done, backend=_backend(args))
    results = [{**it, "exit": j.returncode, "run": j.run_path} for it, j in zip(items, jobs)]
    if args.json:
        _print_json(results)
    return 1 if any(r["exit"] != 0 for r in results) else 0


def cmd_recipes(args) -> int:
    from .config import recipe_table

    rows = recipe_table()
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(f"{r['name']}: {r['about']}")
        changed = {k: v for k, v in r["settings"].items() if k in RECIPES[r["name"]].settings}
        print("  " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "(the defaults)"))
    print("\nUse one with --recipe NAME (train, sweep, the Train page); flags given as well override it.")
    return 0


def _study_done(record: dict, args) -> int:
    """Write and print a study's record; exit 1 if any of its trainings failed."""
    from .reference import write_record

    if args.record:
        write_record(record, Path(args.record))
    if args.json:
        _print_json(record)
    return 0 if all(r.get("exit") == 0 for r in record.get("results", [])) else 1


def cmd_reference(args) -> int:
    from .reference import run_reference

    record = run_reference(
        args.epochs,
        args.fit_in,
        args.parallel,
        apply_arguments(_base_config(args), args),
        better=not args.no_better,
        dry_run=args.dry_run,
        skip_done=Path(args.skip_done) if args.skip_done else None,
        out=args.out,
        backend=_backend(args),
    )
    return _study_done(record, args)


def cmd_study(args) -> int:
    from .beyond import run_beyond
    from .runs import runs_dir

    work = Path(args.work) if args.work else runs_dir() / "study-beyond"
    record = run_beyond(
        apply_arguments(_base_config(args), args),
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
        backend=_backend(args),
    )
    return _study_done(record, args)


def cmd_export(args) -> int:
    from .reference import export_run
    from .runs import find_run, iter_runs

    runs = [find_run(r) for r in args.runs]
    if args.all_completed:
        runs += [r for r in iter_runs([Path(args.all_completed)]) if r.summary().get("status") == "completed"]
    if not runs:
        raise FerError("export needs RUN arguments or --all-completed FOLDER")
    for run in runs:
        print(export_run(run, Path(args.to), args.weights))
    return 0


def cmd_export_onnx(args) -> int:
    from .deploy import FORMATS, export_variants
    from .runs import iter_runs, reference_dir

    refs = list(args.runs)
    if args.all_reference:
        refs += [r.run_id for r in iter_runs([reference_dir()]) if not r.summary().get("derived_from")]
    if not refs:
        raise FerError("export-onnx needs RUN arguments or --all-reference")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip()) or FORMATS
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    done, failed = [], []
    for ref in refs:
        try:
            done += export_variants(
                ref,
                formats,
                data=args.data,
                out=args.out,
                calibration_images=args.calibration_images,
                force=args.force,
                say=say,
            )
        except FerError as e:  # one run's failure (a parity check, other data) does not stop the others
            failed.append(ref)
            print(f"error: {e}", file=sys.stderr)
    if args.json:
        from .runs import read_json

        _print_json([{"path": str(p), **(read_json(p / "summary.json") or {})} for p in done])
    if failed:
        print(f"{len(failed)} of {len(refs)} runs not exported: {', '.join(failed)}", file=sys.stderr)
    return 2 if failed else 0


def cmd_compare(args) -> int:
    from .compare import matched_budget_gap, pareto_frontier, runs_frame, variants_table

    df = runs_frame()
    if not df.empty:
        df = df[df["data"] == args.data] if args.data else df
        if args.recipe:
            df = df[df["recipe"] == args.recipe]
    done = df[df["status"] == "completed"] if not df.empty else df
    gap = matched_budget_gap(done, y=args.y) if not done.empty else None
    fronts = {}
    for (family, data), g in done.groupby(["family", "data"]) if not done.empty else []:
        f = pareto_frontier(g, args.x, args.y)
        fronts[f"{family}/{data}"] = f[["run_id", "width", args.x, args.y]].to_dict("records")
    out = {
        "x": args.x,
        "y": args.y,
        "data": args.data,
        "runs": int(len(done)),
        "matched_budget_gap": gap.to_dict("records") if gap is not None else [],
        "pareto_frontier": fronts,
        "variants": variants_table(done).to_dict("records") if not done.empty else [],
    }
    if args.json:
        _print_json(out)
        return 0
    print(f"{len(done)} completed runs" + (f" on {args.data}" if args.data else "") + f"; y = {args.y}")
    if gap is not None and not gap.empty:
        print("\nmatched-budget gap (mobilenet minus cnn at equal parameters):")
        print(gap.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if out["variants"]:
        print("\ndeployable variants (deltas against the same network in fp32; speed-up against its torch model):")
        for v in out["variants"]:
            print(
                f"  {v['run_id']:<56} {v['bytes']:>10,} B  public {v['public_delta']:+.4f}  "
                f"private {v['private_delta']:+.4f}  {v['latency_ms_cpu']:.3f} ms ({v['speedup_vs_torch']:.1f}x)"
            )
    for family, rows in fronts.items():
        print(f"\n{family} Pareto frontier ({args.x} vs {args.y}):")
        for r in rows:
            print(f"  {r['run_id']:<44} {r[args.x]:>12,.0f} {r[args.y]:.4f}")
    return 0


def cmd_figures(args) -> int:
    from .compare import runs_frame
    from .figures import report_figures

    for path in report_figures(runs_frame(), args.out, data=args.data, y=args.y):
        print(path)
    return 0


def cmd_queue(args) -> int:
    from .jobs import run_queue

    return run_queue(Path(args.job_dir))


def cmd_jobs(args) -> int:
    from .jobs import job_runs, list_jobs

    jobs = [{**j, "trainings": job_runs(j)} for j in list_jobs()]
    if args.json:
        _print_json(jobs)
        return 0
    if not jobs:
        print("no jobs (the dashboard's Train page and `python -m fer_core sweep` start trainings)")
    for j in jobs:
        print(f"job {j['id']} {j['status']}: {j.get('title', '')}")
        for t in j["trainings"]:
            s = t["summary"] or {}
            ep = f"epoch {s.get('epochs_done') or 0}/{s.get('epochs') or '?'}" if s else ""
            print(f"  {t['status']:<9} {t['label']:<28} {ep:<14} {s.get('run_id', '')}")
    return 0


def cmd_cancel(args) -> int:
    from .jobs import cancel_job, cancel_run, jobs_dir

    if (jobs_dir() / args.target).is_dir():
        cancel_job(args.target)
        print(f"job {args.target}: cancelling")
    else:
        cancel_run(args.target)
        print(f"run {args.target}: cancelling")
    return 0


# --------------------------------------------------------------------------------------------------- eval / runs


def cmd_eval(args) -> int:
    import torch

    from .data import load
    from .evaluation import evaluate, evaluate_logits
    from .loading import load_model

    lm = load_model(args.run)
    spec = args.data
    if spec is None and lm.run_id:
        from .runs import find_run

        spec = find_run(lm.run_id).data_spec()
    d = load(spec)
    trained_on = lm.summary.get("data_fingerprint")
    if trained_on and trained_on != d.fingerprint:
        print(
            f"note: {lm.name} was trained on other data ({lm.summary.get('data')}, fingerprint {trained_on}) "
            f"than this {d.name} ({d.fingerprint})",
            file=sys.stderr,
        )
    x, y = d.split(args.split)
    if lm.runtime == "torch":
        ev = evaluate(lm.model, torch.from_numpy(x), torch.from_numpy(y))
    else:
        ev = evaluate_logits(torch.from_numpy(lm.model.logits(x)), y)
    out = {
        "model": lm.name,
        "runtime": lm.runtime,
        "format": lm.format,
        "family": lm.family,
        "width": lm.width,
        "data": d.name,
        "split": args.split,
        "accuracy": ev.accuracy,
        "loss": ev.loss,
        "per_class": ev.per_class,
        "confusion": ev.confusion,
    }
    if args.json:
        _print_json(out)
    else:
        print(f"{lm.name}: {args.split} accuracy {ev.accuracy:.4f} on {d.name} ({len(y)} images)")
        for k, v in ev.per_class.items():
            print(f"  {k:<9} {v if v is None else f'{v:.3f}'}")
    return 0


RUNS_JSON_KEYS = [
    "run_id",
    "family",
    "width",
    "params",
    "state_values",
    "bytes_fp32",
    "bytes_fp16",
    "macs",
    "latency_ms_cpu",
    "format",
    "bytes",
    "derived_from",
    "public_acc",
    "private_acc",
    "best_public_acc",
    "status",
    "epochs_done",
    "epochs",
    "best_epoch",
    "seed",
    "data",
    "data_fingerprint",
    "recipe",
    "distilled",
    "teacher",
    "teacher_private_acc",
    "init_run",
    "lineage",
    "selected_weights",
    "weights_candidates",
    "device",
    "wall_s",
    "img_per_s",
    "source",
    "error",
]


def cmd_runs(args) -> int:
    from .runs import list_summaries

    rows = list_summaries()
    if args.json:
        _print_json([{k: r.get(k) for k in RUNS_JSON_KEYS} for r in rows])
        return 0
    if not rows:
        print("no runs yet: try `python -m fer_core train --model mobilenet --epochs 2 --limit 2000`")
        return 0
    print(f"{'run_id':<44} {'status':<9} {'params':>10} {'public':>7} {'private':>7} {'ep':>7}  data")

    def acc(r: dict, key: str) -> str:
        return f"{r[key]:.4f}" if isinstance(r.get(key), (int, float)) else "-"

    for r in rows:
        ep = f"{r.get('epochs_done') or 0}/{r.get('epochs') or '?'}"
        print(
            f"{r['run_id']:<44} {r.get('status', '?'):<9} {r.get('params') or 0:>10,} {acc(r, 'public_acc'):>7} "
            f"{acc(r, 'private_acc'):>7} {ep:>7}  {r.get('data')}{' (ref)' if r['source'] == 'reference' else ''}"
        )
    return 0


# --------------------------------------------------------------------------------------------------- predict / bench


def cmd_predict(args) -> int:
    from .inference import predict
    from .loading import load_model

    models = [load_model(r, runtime=args.runtime) for r in args.runs]
    for m in models:
        if m.runtime_note:
            print(f"note: {m.name} runs on torch: {m.runtime_note}", file=sys.stderr)
    res = predict(args.image, models, whole_image=args.whole_image)
    if args.json:
        _print_json({"image": str(args.image), **res.to_dict()})
        return 0
    w, h = res.image_size
    if not res.faces:
        print(f"{args.image} ({w}x{h}): {res.message}; use --whole-image if it is already a cropped face")
        return 0
    print(f"{args.image} ({w}x{h}): {len(res.faces)} face(s), detection {res.detect_ms:.1f} ms")
    for i, f in enumerate(res.faces):
        print(f"face {i + 1} at x={f.box[0]} y={f.box[1]} {f.box[2]}x{f.box[3]}")
        for p in f.predictions:
            top = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:3]
            print(f"  {p.model:<44} {p.label:<9} " + "  ".join(f"{k} {v:.2f}" for k, v in top) + f"  ({p.ms:.1f} ms)")
    return 0


def cmd_bench(args) -> int:
    if args.ray:
        from .bench import ray_overhead

        doc = ray_overhead(out_dir=args.out, quiet=args.json)
        if args.json:
            _print_json(doc)
        return 0
    from .bench import run_bench

    doc = run_bench(images=args.images, frames=args.frames, out_dir=args.out, quiet=args.json, device=args.device)
    if args.json:
        _print_json(doc)
    return 0


# --------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fer_core", description="FER Lab: how small can an expression model get?"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="registered families and presets with their parameter counts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("describe", help="params, state values, bytes, MACs and the architecture of a model")
    s.add_argument("model", help="mobilenet | cnn")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--width", type=_number, default=1.0, help="width multiplier (default: 1.0)")
    g.add_argument("--budget", type=_number, default=None, help="parameter budget, e.g. 1e5 (solved to a width)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_describe)

    s = sub.add_parser("status", help="which data and which device the defaults use (the dashboard's home)")
    s.add_argument("--data", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("data", help="what data is found: source, counts per split and class")
    s.add_argument("--data", default=None, help="file/folder or 'synthetic' (default: $FER_DATA, data/, synthetic)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("train", help="train one model into a new run folder")
    s.add_argument("--model", default=None, help="mobilenet | cnn (default: --config's, or --init's)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--width", type=_number, default=None, help="width multiplier (default: 1.0)")
    g.add_argument("--budget", type=_number, default=None, help="parameter budget (solved to a width)")
    g.add_argument("--resume", default=None, metavar="RUN", help="continue a run that was killed")
    s.add_argument("--config", default=None, metavar="FILE", help="a RunConfig JSON; flags given as well override it")
    add_arguments(s)
    s.add_argument("--print-config", action="store_true", help="print the resulting config as JSON; train nothing")
    s.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS or results/runs)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the final summary as JSON")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="several runs: families x budgets (or widths) x seeds")
    s.add_argument("--models", default="mobilenet,cnn", help="comma-separated families (default: mobilenet,cnn)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--budgets", type=_number_list, default=None, help="e.g. 3e4,1e5,3e5,1e6")
    g.add_argument("--widths", type=_number_list, default=None, help="e.g. 0.5,1,2")
    s.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0], help="e.g. 0,1,2")
    s.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU fits several small ones; default: 1)")
    _add_ray_arguments(s)
    s.add_argument("--dry-run", action="store_true", help="print the plan only")
    s.add_argument("--config", default=None, metavar="FILE", help="a RunConfig JSON every run starts from")
    add_arguments(s, exclude=("train.seed",))
    s.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS or results/runs)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("recipes", help="the named training recipes and their settings")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_recipes)

    s = sub.add_parser("reference", help="the reference study (seed report rerun), sized to a time window")
    s.add_argument("--epochs", type=int, default=100, help="epochs per run (default: 100)")
    s.add_argument(
        "--fit-in", type=float, default=None, metavar="SECONDS", help="lower the epochs (alike for all) to fit"
    )
    s.add_argument("--parallel", type=int, default=8, help="runs at once (default: 8)")
    _add_ray_arguments(s)
    s.add_argument("--no-better", action="store_true", help="skip the two better-recipe runs")
    s.add_argument("--skip-done", default=None, metavar="FOLDER", help="train only the runs FOLDER lacks")
    s.add_argument("--dry-run", action="store_true", help="print the plan only")
    s.add_argument("--record", default=None, help="write the study's record (epochs, timings) to this JSON file")
    s.add_argument("--config", default=None, metavar="FILE", help="a RunConfig JSON every run starts from")
    add_arguments(s, exclude=("train.seed", "train.epochs"))
    s.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS or results/runs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_reference)

    s = sub.add_parser("study", help="a prepared study in one command (beyond: teacher, students, reference gaps)")
    s.add_argument("name", choices=["beyond"], help="beyond: see `python -m fer_core study beyond --help`")
    s.add_argument("--fit-in", type=float, default=None, metavar="SECONDS", help="scale the epochs to fit (e.g. 540)")
    s.add_argument("--teacher-epochs", type=int, default=300, help="the teacher's epochs before scaling (default: 300)")
    s.add_argument("--student-epochs", type=int, default=200, help="students' epochs before scaling (default: 200)")
    s.add_argument("--reference-epochs", type=int, default=None, help="(default: the reference runs' own, else 95)")
    s.add_argument(
        "--reference-from", default=None, metavar="FOLDER", help="reference runs already done (default: --out)"
    )
    s.add_argument("--parallel", type=int, default=None, help="runs at once per lane (default: all)")
    _add_ray_arguments(s)
    s.add_argument("--out", default="results/reference", help="where finished runs are exported (default: %(default)s)")
    s.add_argument("--work", default=None, help="where runs train (default: $FER_RUNS/study-beyond)")
    s.add_argument("--log", default=None, help="progress log file (default: WORK/progress.log)")
    s.add_argument("--record", default=None, help="write the study's record (plan, epochs, timings) to this JSON")
    s.add_argument("--dry-run", action="store_true", help="print the plan only")
    s.add_argument("--config", default=None, metavar="FILE", help="a RunConfig JSON every run starts from")
    add_arguments(s, exclude=("train.seed", "train.epochs"))  # the study's recipes set the recipe fields
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("export", help="copy finished runs (with fp16/fp32 weights or none) into another folder")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--all-completed", default=None, metavar="FOLDER", help="every completed run in FOLDER")
    s.add_argument("--to", required=True, help="destination folder, e.g. results/reference")
    s.add_argument("--weights", choices=["fp16", "fp32", "none"], default="fp16", help="(default: fp16)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("export-onnx", help="ONNX fp32/fp16/int8 variants of runs, as derived runs beside them")
    s.add_argument("runs", nargs="*", metavar="RUN", help="run ids or folders")
    s.add_argument("--all-reference", action="store_true", help="every shipped reference run")
    s.add_argument("--formats", default="fp32,fp16,int8", help="a comma-separated subset (default: fp32,fp16,int8)")
    s.add_argument("--data", default=None, help="the parents' data: evaluation, int8 calibration (default: found)")
    s.add_argument("--out", default=None, help="where the derived runs go (default: beside each parent)")
    s.add_argument(
        "--calibration-images", type=int, default=512, help="training images that calibrate int8 (default: 512)"
    )
    s.add_argument("--force", action="store_true", help="redo variants that exist (default: keep them)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export_onnx)

    s = sub.add_parser("compare", help="the matched-budget gap and Pareto frontiers the Compare page shows")
    s.add_argument(
        "--x", default="params", choices=["params", "bytes", "bytes_fp16", "bytes_fp32", "macs", "latency_ms_cpu"]
    )
    s.add_argument("--y", default="private_acc", choices=["public_acc", "private_acc"])
    s.add_argument("--data", default=None, help="only runs on this data (fer2013, synthetic, custom)")
    s.add_argument("--recipe", default=None, help="only runs of this recipe")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("figures", help="the report's scatters as PNG, drawn by the same code as the dashboard")
    s.add_argument("--out", default="results/figures", help="folder (default: results/figures)")
    s.add_argument("--data", default="fer2013", help="data source of the runs to draw (default: fer2013)")
    s.add_argument("--y", default="private_acc", choices=["public_acc", "private_acc"])
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("jobs", help="queued trainings started from the dashboard, with their progress")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("cancel", help="cancel a job (its queue) or one running run")
    s.add_argument("target", help="job id or run id")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("queue", help=argparse.SUPPRESS)  # the detached process behind a job
    s.add_argument("job_dir")
    s.set_defaults(func=cmd_queue)

    s = sub.add_parser("eval", help="evaluate a run or weights file on a split")
    s.add_argument("run", help="run id, run folder or weights file")
    s.add_argument("--split", default="public", choices=["train", "public", "private"])
    s.add_argument("--data", default=None, help="data to evaluate on (default: the run's own)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("runs", help="a table of all runs (yours and the shipped reference runs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("predict", help="find faces in an image and classify each with several models")
    s.add_argument("image")
    s.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="run ids, run folders or weights files")
    s.add_argument("--whole-image", action="store_true", help="treat the whole image as one face")
    s.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "onnx", "torch"],
        help="auto: ONNX Runtime when installed (faster on the CPU), else torch (default: auto)",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("bench", help="training throughput vs a naive pipeline, and frame latency")
    s.add_argument("--images", type=int, default=2560, help="training images per pipeline (default: 2560)")
    s.add_argument("--frames", type=int, default=50, help="frames for the latency median (default: 50)")
    s.add_argument("--out", default=None, help="folder for the JSON (default: results/bench)")
    s.add_argument("--device", default="cpu", help="cpu | cuda: where both training pipelines run (default: cpu)")
    s.add_argument(
        "--ray", action="store_true", help="instead: a local Ray's start time and its per-run overhead vs the queue"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a machine problem (out of memory, disk full): one line, details on request
        if os.environ.get("FER_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e} (set FER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
