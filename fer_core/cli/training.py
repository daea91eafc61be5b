"""`train`, `sweep` and `recipes`: one training from a RunConfig (or flags), many at once, the recipes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fer_core.analysis.planning import configs, plan
from fer_core.cli.common import add_ray_arguments, backend_from, base_config, number, number_list, print_json
from fer_core.common import FerError
from fer_core.jobs.queue import run_configs
from fer_core.models import count_params, solve_width
from fer_core.store.loading import NotTrainedModel, load_torch_model
from fer_core.store.runs import Run, find_run, runs_dir
from fer_core.training.config import RECIPES, RunConfig, add_arguments, apply_arguments, recipe_table
from fer_core.training.pruning import prune_config
from fer_core.training.stops import install_cancel_handler
from fer_core.training.trainer import fit


def _train_config(args) -> RunConfig:
    """``train``'s config: --config FILE (or the defaults), the model flags, then every explicit flag over it."""
    cfg = base_config(args)
    parent = args.prune_from or cfg.prune.parent
    start = parent or (args.init if args.model is None and not args.config else None)
    if start:  # fine-tuning or pruning: the run started from says what to build
        what = "prune.parent" if parent else "init"
        try:
            lm = load_torch_model(start)
        except NotTrainedModel as e:
            raise FerError(f"{what}: {start!r} {e}") from None
        cfg.model.family, cfg.model.width = lm.family, lm.width
    elif args.model is None and not args.config:
        raise FerError("train needs --model (mobilenet or cnn), --config FILE, --init RUN or --resume RUN")
    if args.model is not None:
        cfg.model.family = args.model
    if args.width is not None:
        cfg.model.width, cfg.model.budget = args.width, None
    if args.budget is not None:  # a pruned run keeps its parent's width: the budget is what pruning cuts it to
        cfg.model.budget = args.budget
        if not parent:
            cfg.model.width, _ = solve_width(cfg.model.family, args.budget)
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
                f"run {e['run_id']}: {e['family']} w{e['width']:g}, {e['params']:,} params"
                + (f" pruned to {e['budget']:,.0f} from {e['pruned_from']}" if e.get("pruned_from") else "")
                + ", "
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
    return _train_and_report(cfg, args, run)


def _train_and_report(cfg: RunConfig, args, run: Run | None) -> int:
    root = Path(args.out) if args.out else runs_dir()
    summary = fit(cfg, on_event=_Progress(args.quiet), run=run, resume=run is not None, root=root)
    run = run or Run(root / summary["run_id"])
    if args.json:
        print_json(summary)
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


def cmd_prune(args) -> int:
    """``prune RUN --budget N``: whole channels out of a trained run until it has N parameters, fine-tuned; a
    new run whose lineage names its parent."""
    install_cancel_handler()
    cfg = prune_config(args.parent, args.budget, args.importance, args.steps)
    cfg = apply_arguments(cfg, args).validate()
    if args.print_config:
        sys.stdout.write(cfg.to_json())
        return 0
    return _train_and_report(cfg, args, None)


def cmd_sweep(args) -> int:
    families = [m.strip() for m in args.models.split(",") if m.strip()]
    items = plan(families, budgets=args.budgets, widths=args.widths, seeds=args.seeds)
    cfgs = configs(items, apply_arguments(base_config(args), args))
    print(f"sweep: {len(cfgs)} runs, {args.parallel} at a time (recipe {cfgs[0].recipe})", file=sys.stderr)
    for c in cfgs:
        p = count_params(c.model.family, c.model.width)
        print(f"  {c.model.family:<10} width {c.model.width:<6g} {p:>10,} params  seed {c.train.seed}", file=sys.stderr)
    if args.dry_run:
        if args.json:
            print_json([{**it, "params": count_params(it["family"], it["width"])} for it in items])
        return 0

    quiet = args.parallel > 1 or args.quiet

    def done(job) -> None:
        c = job.tag["config"]
        print(
            f"done ({job.returncode}): {c.model.family} w{c.model.width:g} seed {c.train.seed} -> {job.run_path}",
            file=sys.stderr,
        )
        if job.returncode and job.stderr_tail:
            print("  " + job.stderr_tail.replace("\n", "\n  "), file=sys.stderr)

    jobs = run_configs(cfgs, args.parallel, out=args.out, quiet=quiet, on_done=done, backend=backend_from(args))
    results = [{**it, "exit": j.returncode, "run": j.run_path} for it, j in zip(items, jobs)]
    if args.json:
        print_json(results)
    return 1 if any(r["exit"] != 0 for r in results) else 0


def cmd_recipes(args) -> int:
    rows = recipe_table()
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(f"{r['name']}: {r['about']}")
        changed = {k: v for k, v in r["settings"].items() if k in RECIPES[r["name"]].settings}
        print("  " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "(the defaults)"))
    print("\nUse one with --recipe NAME (train, sweep, the Train page); flags given as well override it.")
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("train", help="train one model into a new run folder")
    s.add_argument("--model", default=None, help="mobilenet | cnn (default: --config's, or --init's)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--width", type=number, default=None, help="width multiplier (default: 1.0)")
    g.add_argument("--budget", type=number, default=None, help="parameter budget (solved to a width)")
    g.add_argument("--resume", default=None, metavar="RUN", help="continue a run that was killed")
    s.add_argument("--config", default=None, metavar="FILE", help="a RunConfig JSON; flags given as well override it")
    add_arguments(s)
    s.add_argument("--print-config", action="store_true", help="print the resulting config as JSON; train nothing")
    s.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS or results/runs)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the final summary as JSON")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "prune",
        help="cut whole channels out of a trained run until it has --budget parameters, fine-tune it",
        description="Structured pruning (Torch-Pruning): every layer loses the same share of its channels until "
        "the network has the budget (within 5%%), in --steps steps spread over the first half of the epochs, "
        "fine-tuning between and after them with the parent's own settings (30 epochs, cosine schedule, unless "
        "flags say otherwise). The result is a new run with its lineage (parent, criterion, steps, epochs).",
    )
    s.add_argument("parent", metavar="RUN", help="the trained run to prune (id, folder or weights file)")
    s.add_argument("--budget", type=number, required=True, help="parameters after pruning (e.g. 5e4)")
    s.add_argument("--importance", default="l1", choices=("l1", "l2", "bn", "taylor"), help="which channels go")
    s.add_argument("--steps", type=int, default=1, help="pruning steps, fine-tuning between them (default: 1)")
    add_arguments(s, exclude=("prune.parent", "prune.importance", "prune.steps", "init"))
    s.add_argument("--print-config", action="store_true", help="print the resulting config as JSON; train nothing")
    s.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS or results/runs)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the final summary as JSON")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("sweep", help="several runs: families x budgets (or widths) x seeds")
    s.add_argument("--models", default="mobilenet,cnn", help="comma-separated families (default: mobilenet,cnn)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--budgets", type=number_list, default=None, help="e.g. 3e4,1e5,3e5,1e6")
    g.add_argument("--widths", type=number_list, default=None, help="e.g. 0.5,1,2")
    s.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0], help="e.g. 0,1,2")
    s.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU fits several small ones; default: 1)")
    add_ray_arguments(s)
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
