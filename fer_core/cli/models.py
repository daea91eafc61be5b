"""`models` and `describe`: the registered families, their presets, and one model's size and shape."""

from __future__ import annotations

import sys

from fer_core.cli.common import number, print_json
from fer_core.models import PRESETS, budget_note, count_params, create_model, family_about, list_models, solve_width
from fer_core.models.stats import model_stats


def cmd_models(args) -> int:
    rows = []
    for name in list_models():
        rows.append(
            {
                "name": name,
                "kind": "family",
                "width": 1.0,
                "params": count_params(name, 1.0),
                "about": family_about(name),
            }
        )
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
        print_json(rows)
        return 0
    print(f"{'name':<16} {'kind':<7} {'width':>6} {'params':>11}  about")
    for r in rows:
        print(f"{r['name']:<16} {r['kind']:<7} {r['width']:>6g} {r['params']:>11,}  {r.get('about', '')}")
    print("\nAny width works: --width W, or --budget N to solve the width for N parameters.")
    return 0


def _width_from(args) -> tuple[float, float | None]:
    if args.budget is not None:
        w, _ = solve_width(args.model, args.budget)
        return w, args.budget
    return args.width, None


def cmd_describe(args) -> int:
    width, budget = _width_from(args)
    model = create_model(args.model, width)
    note = budget_note(args.model, budget) if budget else None
    out = {"family": args.model, "width": width, "budget": budget, **model_stats(model), "architecture": str(model)}
    out["budget_error"] = round(out["params"] / budget - 1, 4) if budget else None
    out["note"] = note
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print_json(out)
        return 0
    print(out.pop("architecture"))
    print()
    for k, v in out.items():
        if v is not None:
            print(f"{k:>15}: {v:,}" if isinstance(v, int) else f"{k:>15}: {v}")
    print("\nstate_values counts BatchNorm running statistics too (the seed report's 109,761 for MobileNet).")
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("models", help="registered families and presets with their parameter counts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("describe", help="params, state values, bytes, MACs and the architecture of a model")
    s.add_argument("model", help="a family: see `python -m fer_core models`")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--width", type=number, default=1.0, help="width multiplier (default: 1.0)")
    g.add_argument("--budget", type=number, default=None, help="parameter budget, e.g. 1e5 (solved to a width)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_describe)
