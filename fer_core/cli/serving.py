"""`predict`, `export-onnx`, `int8-sensitivity` and `format-cost`: faces in an image classified by several models,
deployable ONNX variants, and what their formats cost."""

from __future__ import annotations

import sys

from fer_core.cli.common import print_json
from fer_core.common import FerError
from fer_core.serving.align import LIGHT_DEFAULT, LIGHT_MODES
from fer_core.serving.detection import DETECTORS
from fer_core.serving.inference import CROPS, predict
from fer_core.serving.models import load_model
from fer_core.serving.onnx import DEFAULT_FORMATS
from fer_core.store.files import read_json
from fer_core.store.runs import iter_runs, reference_dir
from fer_core.studies.format_cost import format_cost
from fer_core.studies.int8_sweep import int8_sensitivity
from fer_core.studies.variants import export_variants


def cmd_export_onnx(args) -> int:
    refs = list(args.runs)
    if args.all_reference:
        refs += [r.run_id for r in iter_runs([reference_dir()]) if not r.summary().get("derived_from")]
    if not refs:
        raise FerError("export-onnx needs RUN arguments or --all-reference")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip()) or DEFAULT_FORMATS
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
                qat_epochs=args.qat_epochs,
                say=say,
            )
        except FerError as e:  # one run's failure (a parity check, other data) does not stop the others
            failed.append(ref)
            print(f"error: {e}", file=sys.stderr)
    if args.json:
        print_json([{"path": str(p), **(read_json(p / "summary.json") or {})} for p in done])
    if failed:
        print(f"{len(failed)} of {len(refs)} runs not exported: {', '.join(failed)}", file=sys.stderr)
    return 2 if failed else 0


def cmd_int8_sensitivity(args) -> int:
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    docs = [int8_sensitivity(r, args.data, args.calibration_images, args.goal, args.out, say) for r in args.runs]
    if args.json:
        print_json(docs)
    return 0


def cmd_format_cost(args) -> int:
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip()) if args.formats else ()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    doc = format_cost(args.runs, formats, args.family, args.data, say)
    if args.json:
        print_json(doc)
        return 0
    print("per format, over both splits (each file weighs the same; ± the measurement's standard error):")
    for fmt, p in doc["by_format"].items():
        print(f"  {fmt:<9} {p['files']:>3} files: mean {p['mean_loss_pts']:+.2f} ± {p['se_pts']:.2f} pts lost, worst "
              f"{p['worst_pts']:+.2f}; {p['within_0.2']} of {p['files']} lose at most 0.2")  # fmt: skip
    if doc["skipped"]:
        print(f"skipped {len(doc['skipped'])} variant(s), each named above with why")
    return 0


def cmd_predict(args) -> int:
    models = [load_model(r, runtime=args.runtime) for r in args.runs]
    for m in models:
        if m.runtime_note:
            print(f"note: {m.name} runs on torch: {m.runtime_note}", file=sys.stderr)
    res = predict(
        args.image,
        models,
        whole_image=args.whole_image,
        detector=args.detector,
        crop=args.crop,
        light=args.light,
        detect_size=args.detect_size,
    )
    if res.note:
        print(f"note: {res.note}", file=sys.stderr)
    if args.json:
        print_json({"image": str(args.image), **res.to_dict()})
        return 0
    w, h = res.image_size
    if not res.faces:
        print(
            f"{args.image} ({w}x{h}): {res.message} by {res.detector}; more light on the face, a larger face (about 40 "
            "px or more) or a face turned to the camera helps; use --whole-image if it is already a cropped face"
        )
        return 0
    print(f"{args.image} ({w}x{h}): {len(res.faces)} face(s), {res.detector} detection {res.detect_ms:.1f} ms")
    for i, f in enumerate(res.faces):
        score = "" if f.score is None else f", score {f.score:.2f}"
        crop = "aligned on its landmarks" if f.aligned else "box crop"
        print(f"face {i + 1} at x={f.box[0]} y={f.box[1]} {f.box[2]}x{f.box[3]}{score}, {crop}")
        for p in f.predictions:
            top = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:3]
            print(f"  {p.model:<44} {p.label:<9} " + "  ".join(f"{k} {v:.2f}" for k, v in top) + f"  ({p.ms:.1f} ms)")
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("export-onnx", help="ONNX fp32/fp16/int8(-qat) variants of runs, as derived runs beside them")
    s.add_argument("runs", nargs="*", metavar="RUN", help="run ids or folders")
    s.add_argument("--all-reference", action="store_true", help="every shipped reference run")
    s.add_argument(
        "--formats",
        default="fp32,fp16,int8",
        help="a comma-separated subset of fp32,fp16,int8,int8-qat (default: fp32,fp16,int8; int8-qat fine-tunes "
        "quantization-aware: minutes per run on a CPU)",
    )
    s.add_argument("--data", default=None, help="the parents' data: evaluation, int8 calibration (default: found)")
    s.add_argument("--out", default=None, help="where the derived runs go (default: beside each parent)")
    s.add_argument(
        "--calibration-images", type=int, default=512, help="training images that calibrate int8 (default: 512)"
    )
    s.add_argument(
        "--qat-epochs", type=int, default=1, help="epochs of quantization-aware fine-tuning for int8-qat (default: 1)"
    )
    s.add_argument("--force", action="store_true", help="redo variants that exist (default: keep them)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export_onnx)

    s = sub.add_parser("int8-sensitivity", help="which layers int8 costs accuracy in, and a mixed file that keeps it")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run ids or folders (trained runs)")
    s.add_argument("--data", default=None, help="the run's data: public split to choose, private to report")
    s.add_argument("--goal", type=float, default=0.2, help="points of public accuracy int8 may lose (default: 0.2)")
    s.add_argument("--calibration-images", type=int, default=512, help="training images (default: 512)")
    s.add_argument("--out", default=None, help="where RUN.json goes (default: results/int8/)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_int8_sensitivity)

    s = sub.add_parser(
        "format-cost",
        help="what each ONNX variant loses against its fp32 network, face by face, with its standard error",
    )
    s.add_argument("runs", nargs="*", metavar="RUN", help="variants, or parents for all their variants (default: all)")
    s.add_argument("--formats", default=None, help="a comma-separated subset of fp32,fp16,int8,int8-qat (default: all)")
    s.add_argument("--family", default=None, help="only this family's variants")
    s.add_argument("--data", default=None, help="the parents' data (default: found as for the parents)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_format_cost)

    s = sub.add_parser("predict", help="find faces in an image and classify each with several models")
    s.add_argument("image")
    s.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="run ids, run folders or weights files")
    s.add_argument("--whole-image", action="store_true", help="treat the whole image as one face")
    s.add_argument("--detector", default="yunet", choices=DETECTORS, help="face detector (default: yunet)")
    s.add_argument(
        "--detect-size", type=int, default=None, metavar="PX",
        help="search a copy at most PX long: faster, misses faces under about 40 px there (default: full size)",
    )  # fmt: skip
    s.add_argument(
        "--crop", default="aligned", choices=CROPS, help="aligned on the landmarks, or the box (default: aligned)"
    )
    s.add_argument(
        "--light", default=LIGHT_DEFAULT, choices=LIGHT_MODES, help=f"the crop's light step (default: {LIGHT_DEFAULT})"
    )
    s.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "onnx", "torch"],
        help="auto: ONNX Runtime when installed (faster on the CPU), else torch (default: auto)",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)
