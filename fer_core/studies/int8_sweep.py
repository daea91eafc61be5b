"""Why int8 costs a network accuracy, layer by layer: ``int8-sensitivity RUN``.

The int8 variants (``export-onnx``) quantize every convolution but the first and the classifier. Here each of the
others is in turn left in fp32 too, and the public split says how much accuracy that gives back ("recovered").
Then, most recovering first, layers are kept in fp32 until int8 loses at most ``goal_pts`` points of the fp32
export's public accuracy. The layers are chosen on the public split only; the private split, untouched by the
choice, reports what the mixed file keeps, beside the file sizes. Calibration as ``export-onnx`` does it (512
training faces, seed 0).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fer_core.data.sources import load
from fer_core.serving.int8 import quantize_int8
from fer_core.serving.onnx import ort_session, parse_onnx, to_onnx
from fer_core.store.files import atomic_write_json
from fer_core.store.loading import load_torch_model
from fer_core.store.runs import RESULTS_DIR


def _acc(blob: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float((ort_session(blob, threads=1).logits(x).argmax(1) == y).mean())


def int8_sensitivity(ref: str, data: str | None = None, calibration_images: int = 512, goal_pts: float = 0.2,
                     out_dir: str | Path | None = None, say=print) -> dict:  # fmt: skip
    """Per-layer int8 sensitivity of a run and the mixed-precision file that meets ``goal_pts``; written to
    ``results/int8/RUN.json`` (or ``out_dir``)."""
    t0 = time.perf_counter()
    lm = load_torch_model(ref)
    fd = load(data)
    calib = fd.train_x[np.sort(np.random.default_rng(0).permutation(len(fd.train_y))[:calibration_images])]
    fp32 = to_onnx(lm.torch_model or lm.model, {"family": lm.family, "width": f"{lm.width:g}"})
    base = {"public": _acc(fp32, fd.public_x, fd.public_y), "private": _acc(fp32, fd.private_x, fd.private_y)}
    q, settings = quantize_int8(fp32, calib)
    default = {"public": _acc(q, fd.public_x, fd.public_y), "private": _acc(q, fd.private_x, fd.private_y)}
    say(f"{lm.name}: fp32 public {base['public']:.4f}, int8 {default['public']:.4f} "
        f"({100 * (default['public'] - base['public']):+.2f} pts)")  # fmt: skip
    convs = [n.name for n in parse_onnx(fp32).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    layers = []
    for name in [c for c in convs if c not in settings["fp32_nodes"]]:
        acc = _acc(quantize_int8(fp32, calib, keep_fp32=(name,))[0], fd.public_x, fd.public_y)
        layers.append({"node": name, "public_if_fp32": acc, "recovered_pts": round(100 * (acc - default["public"]), 3)})
        say(f"  {name}: kept in fp32 -> public {acc:.4f} ({layers[-1]['recovered_pts']:+.2f} pts)")
    kept: list[str] = []
    blob, public = q, default["public"]
    for row in sorted(layers, key=lambda r: -r["recovered_pts"]):
        if 100 * (base["public"] - public) <= goal_pts or row["recovered_pts"] <= 0:
            break
        kept.append(row["node"])
        blob = quantize_int8(fp32, calib, keep_fp32=tuple(kept))[0]
        public = _acc(blob, fd.public_x, fd.public_y)
        say(f"  keep {len(kept)} in fp32 -> public {public:.4f} ({100 * (public - base['public']):+.2f} pts)")
    mixed = {"public": public, "private": _acc(blob, fd.private_x, fd.private_y), "fp32_nodes": kept}
    doc = {
        "run_id": lm.run_id or lm.name,
        "data": fd.name,
        "goal_pts": goal_pts,
        "fp32": {**base, "bytes": len(fp32)},
        "int8": {**default, "bytes": len(q), "fp32_nodes": settings["fp32_nodes"]},
        "layers": layers,
        "mixed": {**mixed, "bytes": len(blob)},
        "lost_pts": {
            "int8_public": round(100 * (base["public"] - default["public"]), 3),
            "int8_private": round(100 * (base["private"] - default["private"]), 3),
            "mixed_public": round(100 * (base["public"] - mixed["public"]), 3),
            "mixed_private": round(100 * (base["private"] - mixed["private"]), 3),
        },
        "goal_met_private": 100 * (base["private"] - mixed["private"]) <= goal_pts,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(out_dir) if out_dir else RESULTS_DIR / "int8"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{doc['run_id']}.json", doc)
    lost = doc["lost_pts"]
    say(f"{doc['run_id']}: int8 loses {lost['int8_private']:+.2f} pts private; with {len(kept)} more layer(s) in fp32 "
        f"{lost['mixed_private']:+.2f} ({len(blob):,} B vs {len(q):,} B int8, {len(fp32):,} B fp32)")  # fmt: skip
    return doc
