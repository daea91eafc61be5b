"""`runs`, `eval`, `compare`, `figures` and `export`: the results store, read, compared, drawn and shipped."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from fer_core.analysis.compare import (
    EDGE,
    KEEPS,
    matched_budget_gap,
    pairwise_gaps,
    pareto_frontier,
    pruned_vs_scratch,
    runs_frame,
    smallest_files,
    variants_table,
)
from fer_core.analysis.families import family_table
from fer_core.analysis.figures import report_figures
from fer_core.cli.common import print_json
from fer_core.common import FerError
from fer_core.data.sources import load
from fer_core.serving.models import load_model
from fer_core.store.runs import find_run, iter_runs, list_summaries
from fer_core.studies.reference import export_run
from fer_core.training.evaluation import evaluate, evaluate_logits


def cmd_export(args) -> int:
    runs = [find_run(r) for r in args.runs]
    if args.all_completed:
        runs += [r for r in iter_runs([Path(args.all_completed)]) if r.summary().get("status") == "completed"]
    if not runs:
        raise FerError("export needs RUN arguments or --all-completed FOLDER")
    for run in runs:
        print(export_run(run, Path(args.to), args.weights))
    return 0


def cmd_compare(args) -> int:
    df = runs_frame()
    if not df.empty:
        df = df[df["data"] == args.data] if args.data else df
        if args.recipe:
            df = df[df["recipe"] == args.recipe]
    done = df[df["status"] == "completed"] if not df.empty else df
    a, b = args.gap
    keeps = _levels(args.keeps)
    gap = matched_budget_gap(done, y=args.y, a=a, b=b) if not done.empty else None
    fronts = {}
    for (family, data), g in done.groupby(["family", "data"]) if not done.empty else []:
        f = pareto_frontier(g, args.x, args.y)
        fronts[f"{family}/{data}"] = f[["run_id", "width", args.x, args.y]].to_dict("records")
    out = {
        "x": args.x,
        "y": args.y,
        "data": args.data,
        "runs": int(len(done)),
        "gap_families": [a, b],
        "matched_budget_gap": gap.to_dict("records") if gap is not None else [],
        "pareto_frontier": fronts,
        "variants": variants_table(done).to_dict("records") if not done.empty else [],
        "families_at_budgets": _records(family_table(done, y=args.y)) if not done.empty else [],
        "pairwise_gaps": _records(pairwise_gaps(done, y=args.y)) if not done.empty else [],
        "pruned_vs_scratch": _records(pruned_vs_scratch(done, y=args.y)) if not done.empty else [],
        "smallest_files": _records(smallest_files(done, keeps, y=args.y)) if not done.empty else [],
    }
    if args.json:
        print_json(out)
        return 0
    print(f"{len(done)} completed runs" + (f" on {args.data}" if args.data else "") + f"; y = {args.y}")
    if gap is not None and not gap.empty:
        print(f"\nmatched-budget gap ({a} minus {b} at equal parameters):")
        print(gap.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if out["families_at_budgets"]:
        print(
            f"\nwhich family wins at each size (plain runs within 15% of the budget; {args.y}, mean ± sd over seeds):"
        )
        for r in out["families_at_budgets"]:
            sd = f" ± {r['sd']:.4f}" if r["sd"] is not None else ""
            win = f"  wins by {r['margin']:.4f}" if r["margin"] is not None else ""
            print(
                f"  {r['data']}/{r['recipe']:<8} {r['budget']:>9,.0f}  #{r['rank']} {r['family']:<13} "
                f"{r['params']:>9,} params  {r['mean']:.4f}{sd} ({r['runs']} runs){win}"
            )
    if out["pairwise_gaps"]:
        print(
            f"\nevery pair of families at equal parameters (A minus B at A's sizes, B interpolated on log-parameters "
            f"or its nearest run within {EDGE:.0%}; {args.y}, mean ± sd over A's seeds; se: the standard error of "
            f"the gap with both families' seed spreads, where B too has seeds there):"
        )
        for r in out["pairwise_gaps"]:
            sd = f" ± {r['gap_sd']:.4f}" if r["gap_sd"] is not None else ""
            se = f", se {r['gap_se']:.4f} with {int(r['b_seeds'])} of B's" if r.get("gap_se") is not None else ""
            print(
                f"  {r['data']}/{r['recipe']:<8} {r['a'] + ' - ' + r['b']:<28} at {r['params']:>9,}  "
                f"{r['a_acc']:.4f} vs {r['b_acc_interp']:.4f} ({r['b_at']})  {r['gap_mean']:+.4f}{sd} "
                f"({r['seeds']} seed{'s' if r['seeds'] != 1 else ''}{se})"
            )
    if out["pruned_vs_scratch"]:
        print(f"\npruned against scratch ({args.y}; scratch: the family's seed-protocol runs at the same size):")
        for r in out["pruned_vs_scratch"]:
            sd = f" (scratch sd {r['scratch_sd']:.4f})" if r["scratch_sd"] is not None else ""
            print(
                f"  {r['run_id']:<42} {r['parent_params']:>9,} -> {r['params']:>8,} params, {r['epochs']} epochs  "
                f"pruned {r['pruned_acc']:.4f}  scratch {r['scratch_acc_interp']:.4f}  {r['diff']:+.4f}{sd}"
            )
    if out["variants"]:
        print("\ndeployable variants (deltas against the same network in fp32; speed-up against its torch model):")
        for v in out["variants"]:
            print(
                f"  {v['run_id']:<56} {v['bytes']:>10,} B  public {v['public_delta']:+.4f}  "
                f"private {v['private_delta']:+.4f}  {v['latency_ms_cpu']:.3f} ms ({v['speedup_vs_torch']:.1f}x)"
            )
    if out["smallest_files"]:
        print(f"\nthe smallest file per family that keeps {args.y} at each level (any format):")
        for r in out["smallest_files"]:
            print(
                f"  {r['data']:<9} >= {r['keeps']:.4f}  {r['family']:<13} {r['bytes']:>10,} B  {r['format']:<14} "
                f"{r['acc']:.4f}  {r['run_id']}"
            )
    for family, rows in fronts.items():
        print(f"\n{family} Pareto frontier ({args.x} vs {args.y}):")
        for r in rows:
            print(f"  {r['run_id']:<44} {r[args.x]:>12,.0f} {r[args.y]:.4f}")
    return 0


def _levels(text: str) -> list[float]:
    """--keeps: accuracies between 0 and 1, comma-separated."""
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FerError(f"--keeps {text!r}: give accuracies between 0 and 1, comma-separated (e.g. 0.6,0.62)") from None
    bad = [v for v in levels if not 0 <= v <= 1]
    if bad or not levels:
        raise FerError(f"--keeps {text!r}: every level must lie between 0 and 1 (e.g. 0.6,0.62)")
    return levels


def _records(df) -> list[dict]:
    """A DataFrame as JSON-ready rows (NaN as None)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


def cmd_figures(args) -> int:
    for path in report_figures(runs_frame(), args.out, data=args.data, y=args.y):
        print(path)
    return 0


def cmd_eval(args) -> int:
    lm = load_model(args.run)
    spec = args.data
    if spec is None and lm.run_id:
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
        print_json(out)
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
    rows = list_summaries()
    if args.json:
        print_json([{k: r.get(k) for k in RUNS_JSON_KEYS} for r in rows])
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


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("export", help="copy finished runs (with fp16/fp32 weights or none) into another folder")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--all-completed", default=None, metavar="FOLDER", help="every completed run in FOLDER")
    s.add_argument("--to", required=True, help="destination folder, e.g. results/reference")
    s.add_argument("--weights", choices=["fp16", "fp32", "none"], default="fp16", help="(default: fp16)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("compare", help="the matched-budget gap and Pareto frontiers the Compare page shows")
    s.add_argument(
        "--x", default="params", choices=["params", "bytes", "bytes_fp16", "bytes_fp32", "macs", "latency_ms_cpu"]
    )
    s.add_argument("--y", default="private_acc", choices=["public_acc", "private_acc"])
    s.add_argument("--data", default=None, help="only runs on this data (fer2013, synthetic, custom)")
    s.add_argument("--recipe", default=None, help="only runs of this recipe")
    s.add_argument(
        "--gap", nargs=2, default=["mobilenet", "cnn"], metavar=("A", "B"),
        help="the matched-budget gap's families: A minus B (default: mobilenet cnn)",
    )  # fmt: skip
    s.add_argument(
        "--keeps", default=",".join(f"{v:g}" for v in KEEPS), metavar="ACC[,ACC...]",
        help="accuracy levels for the smallest file per family that keeps each (default: "
        + ",".join(f"{v:g}" for v in KEEPS) + ")",
    )  # fmt: skip
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("figures", help="the report's scatters as PNG, drawn by the same code as the dashboard")
    s.add_argument("--out", default="results/figures", help="folder (default: results/figures)")
    s.add_argument("--data", default="fer2013", help="data source of the runs to draw (default: fer2013)")
    s.add_argument("--y", default="private_acc", choices=["public_acc", "private_acc"])
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("eval", help="evaluate a run or weights file on a split")
    s.add_argument("run", help="run id, run folder or weights file")
    s.add_argument("--split", default="public", choices=["train", "public", "private"])
    s.add_argument("--data", default=None, help="data to evaluate on (default: the run's own)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("runs", help="a table of all runs (yours and the shipped reference runs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_runs)
