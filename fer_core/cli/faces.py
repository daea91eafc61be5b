"""`face-template` and `eval-faces`: the crop geometry measured from FER2013, and the face path measured end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fer_core.cli.common import print_json
from fer_core.common import FerError
from fer_core.data.sources import load as load_data
from fer_core.serving.align import TEMPLATE_FILE, measure_template
from fer_core.serving.detection import get_detector
from fer_core.serving.models import available_models, default_models, load_model
from fer_core.store.files import atomic_write_bytes
from fer_core.studies.faces import CONDITIONS, PATHS, evaluate, goals


def cmd_face_template(args) -> int:
    data = load_data(args.data)
    if data.synthetic and not args.out:
        raise FerError("the shipped template is measured on FER2013: give --data (or set FER_DATA), or --out FILE")
    x = data.train_x
    if args.limit and args.limit < len(x):
        x = x[np.sort(np.random.default_rng(args.seed).choice(len(x), args.limit, replace=False))]
    det = get_detector("yunet")
    if det.note:
        raise FerError(det.note)
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(f"measuring {len(x):,} training faces of {data.name} ({data.path or data.kind})")
    t = measure_template(x, det, say=say)
    t["measured"].update(data=f"{data.name} train ({data.fingerprint})", seed=args.seed)
    out = Path(args.out or TEMPLATE_FILE)
    atomic_write_bytes(out, (json.dumps(t, indent=2) + "\n").encode())
    if args.json:
        print_json({"path": str(out), **t})
    else:
        m = t["measured"]
        say(f"{m['found']:,} of {m['faces']:,} faces found in {m['seconds']} s; template written to {out}")
        for name, (px, py) in zip(t["landmark_names"], t["landmarks"]):
            say(f"  {name:<12} x {px:6.2f}  y {py:6.2f}")
    return 0


def cmd_eval_faces(args) -> int:
    data = load_data(args.data)
    faces, labels = data.split(args.split)
    refs = args.runs or [m["path"] for m in default_models(available_models())]
    if not refs:
        raise FerError("eval-faces needs RUN arguments (no trained models found)")
    models = [load_model(r, runtime=args.runtime) for r in refs]
    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    conds = tuple(c.strip() for c in args.conditions.split(",") if c.strip()) if args.conditions else None
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(f"eval-faces: {data.name} {args.split} faces, {args.frames} frames per condition, {len(models)} model(s)")
    res = evaluate(models, faces, labels, args.frames, paths, conds, seed=args.seed, say=say)
    res.update(data=f"{data.name} {args.split} ({data.fingerprint})")
    if args.out:
        atomic_write_bytes(Path(args.out), (json.dumps(res, indent=1) + "\n").encode())
    if args.json:
        print_json(res)
        return 0
    for note in res["notes"]:
        print(f"note: {note}")
    print(markdown_table(res))
    print()
    for what, value, met in goals(res):
        print(f"{'met    ' if met else 'NOT met'}  {what}: " + ("n/a" if value is None else f"{value:.3f}"))
    if args.out:
        print(f"written to {args.out}")
    return 0


def markdown_table(res: dict) -> str:
    """Per condition and path: recall, false faces per 100 frames, and each model's accuracy kept."""
    names = res["models"]
    short = [n.split("-s")[0] if "-s" in n else n for n in names]
    if len(set(short)) < len(short):  # two runs of one family and width: add the run id's last part
        short = [f"{s} …{n.rsplit('-', 1)[-1]}" for s, n in zip(short, names)]
    head = ["condition", "path", "faces", "recall", "recall (found alone)", "false /100 fr"] + [
        f"kept {s}" for s in short
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = lambda v: "–" if v is None else f"{v:.1%}"
    for r in res["rows"]:
        kept = [pct(r.get(n, {}).get("kept")) for n in names]
        false = "–" if r["false_per_100_frames"] is None else f"{r['false_per_100_frames']:.1f}"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["condition"],
                    r["path"],
                    str(r["faces"]),
                    pct(r["recall"]),
                    pct(r["recall_of_found_alone"]),
                    false,
                    *kept,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("face-template", help="measure where FER2013's faces have their eyes, nose, mouth (and light)")
    s.add_argument("--data", default=None, help="FER2013 (default: $FER_DATA, then data/)")
    s.add_argument("--limit", type=int, default=6000, help="random training faces to measure (default: 6000)")
    s.add_argument("--seed", type=int, default=0, help="which random faces (default: 0)")
    s.add_argument("--out", default=None, help="where the template goes (default: the shipped one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_face_template)

    s = sub.add_parser("eval-faces", help="the face path end to end: test faces in camera-like frames, per condition")
    s.add_argument("runs", nargs="*", metavar="RUN", help="models (default: the ones Try it selects)")
    s.add_argument("--data", default=None, help="FER2013 (default: $FER_DATA, then data/)")
    s.add_argument(
        "--split", default="private", choices=["train", "public", "private"], help="faces from (default: private)"
    )
    s.add_argument("--frames", type=int, default=100, help="frames per condition (default: 100)")
    s.add_argument("--paths", default=",".join(PATHS), help=f"DETECTOR-CROP-LIGHT list (default: {','.join(PATHS)})")
    s.add_argument("--conditions", default=None, help=f"a subset of {','.join(CONDITIONS)} (default: all)")
    s.add_argument("--seed", type=int, default=0, help="draws the frames (default: 0)")
    s.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"], help="(default: auto)")
    s.add_argument("--out", default=None, help="also write the result as JSON here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval_faces)
