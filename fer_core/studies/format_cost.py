"""What a deployable format costs, face by face: ``python -m fer_core format-cost``.

A variant's accuracy lost against its fp32 network is the faces it gets wrong that fp32 got right (``lost``) minus
the faces it gets right that fp32 got wrong (``gained``), over the split. Both come from a few percent of the faces
(the close calls, where any rounding moves the answer), so the loss measured on one split has a standard error of
its own: with d = +1 for a gained face, -1 for a lost one and 0 elsewhere, the loss is -mean(d) and its standard
error sqrt((mean(d^2) - mean(d)^2) / n). This says whether a goal such as "at most 0.2 points lost" can be decided
on these splits at all, and pools the files of one format into a mean whose error shrinks with their number.

The fp32 network is the parent exported to ONNX and run by ONNX Runtime on this CPU, as ``export-onnx`` measures it.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from fer_core.common import FerError
from fer_core.data import sources as fer_data
from fer_core.serving.models import load_model
from fer_core.serving.onnx import ort_session, to_onnx
from fer_core.store.runs import Run, find_run, iter_runs

SPLITS = ("public", "private")


def paired_loss(fp32_right: np.ndarray, variant_right: np.ndarray) -> dict:
    """The faces lost and gained, and the points lost (positive: worse) with their standard error."""
    d = variant_right.astype(np.int8) - fp32_right.astype(np.int8)
    n = len(d)
    if n == 0:
        raise FerError("no faces to compare on")
    lost, gained = int((d < 0).sum()), int((d > 0).sum())
    mean = (gained - lost) / n
    se = math.sqrt(max((lost + gained) / n - mean**2, 0.0) / n)
    return {"faces": n, "lost": lost, "gained": gained, "changed": (lost + gained) / n,
            "loss_pts": round(-100 * mean, 3), "se_pts": round(100 * se, 3)}  # fmt: skip


def variant_cost(variant: Run, fd, fp32_cache: dict | None = None) -> dict:
    """One variant's paired loss on each split and on both together, against its parent's fp32 network."""
    s = variant.summary()
    parent_id = s.get("derived_from")
    if not parent_id or not str(s.get("format", "")).startswith("onnx-"):
        raise FerError(f"{variant.run_id}: not an ONNX variant of a run (export one with export-onnx)")
    file = variant.path / s.get("file", "model.onnx")
    if not file.is_file():
        raise FerError(f"{file}: the variant's file is missing")
    cache = {} if fp32_cache is None else fp32_cache
    if parent_id not in cache:
        lm = load_model(parent_id)
        fp32 = ort_session(to_onnx(lm.model, {}), threads=1)
        cache[parent_id] = {sp: fp32.logits(fd.split(sp)[0]).argmax(1) for sp in SPLITS}
    runner = ort_session(file, threads=1)
    row = {"run_id": variant.run_id, "parent": parent_id, "format": s["format"][len("onnx-") :],
           "family": s.get("family"), "params": s.get("params"), "bytes": s.get("bytes")}  # fmt: skip
    right_fp32, right_var = [], []
    for sp in SPLITS:
        x, y = fd.split(sp)
        a, b = cache[parent_id][sp] == y, runner.logits(x).argmax(1) == y
        row[sp] = paired_loss(a, b)
        right_fp32.append(a)
        right_var.append(b)
    row["both"] = paired_loss(np.concatenate(right_fp32), np.concatenate(right_var))
    return row


def pooled(rows: list[dict], split: str = "both") -> dict:
    """The mean loss over files (each file weighs the same) with its measurement error (the files' standard
    errors combined), and how many files lost at most 0.2 points."""
    losses = [r[split]["loss_pts"] for r in rows]
    se = math.sqrt(sum(r[split]["se_pts"] ** 2 for r in rows)) / len(rows)
    return {"files": len(rows), "mean_loss_pts": round(statistics.mean(losses), 3), "se_pts": round(se, 3),
            "worst_pts": max(losses), "within_0.2": sum(x <= 0.2 for x in losses)}  # fmt: skip


def format_cost(refs: list[str], formats: tuple[str, ...] = (), family: str | None = None, data: str | None = None,
                say=print) -> dict:  # fmt: skip
    """The paired loss of each variant named in ``refs`` (variant ids or parents: a parent stands for its variants),
    or with no ``refs`` of every variant in the store; ``formats``/``family`` narrow the choice. Per format: the
    pooled mean."""
    wanted = set(formats)
    if refs:
        named = [find_run(r) for r in refs]
        ids = {r.run_id for r in named}
        runs = [r for r in iter_runs() if r.run_id in ids or r.summary().get("derived_from") in ids]
    else:
        runs = list(iter_runs())
    variants = []
    for r in runs:
        s = r.summary()
        fmt = str(s.get("format", ""))
        if not s.get("derived_from") or not fmt.startswith("onnx-") or s.get("status") != "completed":
            continue
        if (wanted and fmt[len("onnx-") :] not in wanted) or (family and s.get("family") != family):
            continue
        variants.append(r)
    if not variants:
        raise FerError("no ONNX variant matches: export some with python -m fer_core export-onnx RUN")
    datas = {r.summary().get("data") for r in variants}
    if len(datas) > 1:
        raise FerError(f"the variants come from different data ({', '.join(sorted(map(str, datas)))}): give --family "
                       "or run ids of one")  # fmt: skip
    fd = fer_data.load(data if data is not None else _parents_data(variants))
    other = [r.run_id for r in variants if r.summary().get("data_fingerprint") not in (None, fd.fingerprint)]
    if other:  # another file of the same name: its splits would score the variants on faces they never saw
        raise FerError(f"{other[0]} was evaluated on other data than {fd.name} (fingerprint {fd.fingerprint}): give "
                       "its parent's data with --data")  # fmt: skip
    cache: dict = {}
    rows, skipped = [], []
    for v in sorted(variants, key=lambda r: (r.summary().get("format", ""), r.summary().get("params") or 0, r.run_id)):
        try:
            rows.append(variant_cost(v, fd, cache))
        except FerError as e:  # one variant whose parent or file is gone: said, and the others still scored
            skipped.append({"run_id": v.run_id, "why": str(e)})
            say(f"  {v.run_id}: skipped: {e}")
            continue
        b = rows[-1]["both"]
        say(f"  {rows[-1]['run_id']}: {b['loss_pts']:+.2f} ± {b['se_pts']:.2f} pts over both splits "
            f"({b['lost']} faces lost, {b['gained']} gained of {b['faces']:,})")  # fmt: skip
    if not rows:
        raise FerError("no variant could be scored: " + "; ".join(f"{x['run_id']}: {x['why']}" for x in skipped[:3]))
    by_format = {f: pooled([r for r in rows if r["format"] == f]) for f in sorted({r["format"] for r in rows})}
    return {"data": fd.name, "variants": rows, "by_format": by_format, "skipped": skipped}


def _parents_data(variants: list[Run]) -> str:
    """The data spec of the first variant's parent that is in the store (the others are skipped, said by name)."""
    for v in variants:
        try:
            return find_run(v.summary()["derived_from"]).data_spec()
        except FerError:
            continue
    missing = sorted({str(v.summary()["derived_from"]) for v in variants})
    raise FerError(f"none of the variants' parents is in the store ({', '.join(missing[:3])}): their fp32 networks "
                   "are what a variant is compared with")  # fmt: skip
