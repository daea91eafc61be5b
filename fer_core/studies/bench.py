"""``python -m fer_core bench``: our training engine against a naive pipeline, and webcam-frame latency.

Both training pipelines train the same model (``mobilenet`` width 1.0) on the same number of images, one
after the other, and the ratio of their throughputs is reported. The naive pipeline is what a user writes
without us, in a process of its own with glibc's default allocator: PIL images through per-image torchvision
transforms in a ``DataLoader``, fp32, NCHW, its best of ``num_workers`` 0 and 2, so the ratio is not
flattered by a poorly configured baseline. Then every family is timed at the seed MobileNet's size, against
this machine's measured memory-bandwidth limit (:mod:`fer_core.studies.train_bench`).

The frame benchmark times :func:`fer_core.serving.inference.predict` on a 640x480 frame with one face, for the two
width-1.0 models together (YuNet detection, the aligned crop, both models), with the models served by torch and
by ONNX Runtime; the detector benchmark times each detector alone on that frame. The face benchmark times one
face per model and runtime.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer_core.data.augment import normalize
from fer_core.data.synthetic import make_split
from fer_core.jobs.queue import prepare_job, run_configs
from fer_core.jobs.ray_backend import backend_spec, connect, run_ray_job
from fer_core.models import count_params, create_model, list_models, quant
from fer_core.serving.detection import get_detector
from fer_core.serving.inference import demo_frame, predict
from fer_core.serving.int8 import qat_to_onnx, quantize_int8
from fer_core.serving.live import LiveProcessor
from fer_core.serving.models import use_onnxruntime
from fer_core.serving.onnx import (
    fold_batchnorm,
    latency_ms,
    ort_session,
    to_onnx,
    weights_to_fp16,
)
from fer_core.store.files import atomic_write_json, read_json
from fer_core.store.loading import LoadedModel
from fer_core.store.runs import RESULTS_DIR
from fer_core.studies.reference import SEED_MOBILENET_PARAMS
from fer_core.studies.train_bench import (
    engine_throughput,
    family_training,
    family_width,
    in_own_process,
    lanes_speed,
    training_data,
)
from fer_core.training.config import RunConfig
from fer_core.training.device import cpu_cores


def width_one_models(runtime: str) -> list:
    """The two width-1.0 models (their weights do not change the timings), served by ``runtime``."""
    out = []
    for f in ("mobilenet", "cnn"):
        m = create_model(f, 1.0).eval()
        lm = LoadedModel(name=f, family=f, width=1.0, model=m, torch_model=m)
        out.append(use_onnxruntime(lm, insist=True) if runtime == "onnxruntime" else lm)
    return out


def frame_latency(frames: int = 50, runtime: str = "torch") -> dict:
    """Median ms of predict() on a 640x480 frame with one face, with both width-1.0 models."""
    models = width_one_models(runtime)
    frame = np.ascontiguousarray(np.stack([demo_frame()] * 3, -1))  # RGB, as a webcam gives
    res = predict(frame, models)
    assert res.faces, "the benchmark frame must contain a detectable face"
    totals, detects = [], []
    for _ in range(frames):
        t = time.perf_counter()
        r = predict(frame, models)
        totals.append((time.perf_counter() - t) * 1000)
        detects.append(r.detect_ms)
    return {
        "frame_latency_ms_median": round(statistics.median(totals), 2),
        "frame_latency_ms_p90": round(float(np.percentile(totals, 90)), 2),
        "detect_ms_median": round(statistics.median(detects), 2),
        "faces": len(res.faces),
        "frame": f"640x480, one face, YuNet + aligned crop, mobilenet w1.0 + cnn w1.0, {runtime}",
    }


def detector_latency(frames: int = 50) -> dict:
    """Median ms per detector on the 640x480 one-face frame: YuNet at full size (the default), YuNet on a 320x240
    copy (faster, but it then misses faces under about 80 px), and the Haar cascade (on its 320x240 copy)."""
    rgb = np.ascontiguousarray(np.stack([demo_frame()] * 3, -1))
    out = {}
    for name, det, side in (
        ("yunet", get_detector("yunet"), None),
        ("yunet at 320 px", get_detector("yunet"), 320),
        ("haar", get_detector("haar"), None),
    ):
        det.detect(rgb, side)
        times = []
        for _ in range(frames):
            t = time.perf_counter()
            det.detect(rgb, side)
            times.append((time.perf_counter() - t) * 1000)
        out[name] = round(statistics.median(times), 2)
    return out


def live_latency(frames: int = 100, runtime: str = "onnxruntime") -> dict:
    """The live-video path on a 640x480 stream with one face and both width-1.0 models: every frame through the
    same :class:`LiveProcessor` the page's callback uses, with the video-frame conversions the callback does
    (PyAV, when installed). Returns medians and p90 per stage, and the frames per second it sustains."""
    try:
        import av
    except ImportError:
        av = None
    proc = LiveProcessor(width_one_models(runtime))
    rgb = np.ascontiguousarray(np.stack([demo_frame()] * 3, -1))
    src = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p") if av else None

    def one():  # what the page's frame callback does
        if av is None:
            return proc.process(rgb)
        return av.VideoFrame.from_ndarray(proc.process(src.to_ndarray(format="rgb24")), format="rgb24")

    for _ in range(5):  # warm-up: first calls allocate
        one()
    detect, classify, totals = [], [], []
    t_start = time.perf_counter()
    for _ in range(frames):
        t = time.perf_counter()
        one()
        totals.append((time.perf_counter() - t) * 1000)
        last = proc.last_ms()
        detect.append(last["detect"])
        classify.append(last["classify"])
    wall = time.perf_counter() - t_start
    snap = proc.snapshot()

    def q(v, p):
        return round(float(np.percentile(v, p)), 2)

    return {
        "live_fps": round(frames / wall, 1),
        "live_frame_ms_median": q(totals, 50),
        "live_frame_ms_p90": q(totals, 90),
        "live_detect_ms_median": q(detect, 50),
        "live_detect_ms_p90": q(detect, 90),
        "live_classify_ms_median": q(classify, 50),
        "live_classify_ms_p90": q(classify, 90),
        "live_faces_per_frame": round(snap["faces"] / snap["frames"], 2),
        "live": f"640x480, one face, YuNet + tracking + aligned crop, mobilenet w1.0 + cnn w1.0, {runtime}, "
        + ("PyAV frame conversions included" if av else "no PyAV: conversions not included"),
    }


def ray_overhead(n: int = 4, epochs: int = 1, out_dir: str | None = None, quiet: bool = False) -> dict:
    """The Ray backend against the local queue on this machine: the time to start a local Ray (2 CPUs), and
    the wall time of the same ``n`` tiny trainings (2 at a time) through each; the difference per run is the
    backend's overhead (task scheduling, shipping fer_core and the data, progress and results coming back)."""
    say = (lambda *a: None) if quiet else print
    cfg = RunConfig()
    cfg.model.family, cfg.model.width = "cnn", 0.1
    cfg.data.data, cfg.data.limit, cfg.data.augment = "synthetic", 500, False
    cfg.train.epochs, cfg.train.threads = epochs, 1
    cfgs = []
    for seed in range(n):
        c = RunConfig.from_dict(cfg.to_dict())
        c.train.seed = seed
        cfgs.append(c)
    with tempfile.TemporaryDirectory(prefix="fer-ray-bench-") as tmp:
        old = os.environ.get("FER_RUNS")
        os.environ["FER_RUNS"] = tmp
        try:
            t = time.perf_counter()
            jobs = run_configs(cfgs, parallel=2, out=tmp)
            local_s = time.perf_counter() - t
            assert all(j.returncode == 0 for j in jobs), "a local training failed"
            import ray as ray_module

            started_here = not ray_module.is_initialized()
            t = time.perf_counter()
            ray = connect(None, num_cpus=2)
            start_s = time.perf_counter() - t
            d = prepare_job(cfgs, backend=backend_spec(None))
            plan, state = read_json(d / "plan.json"), read_json(d / "state.json")
            t = time.perf_counter()
            run_ray_job(d, plan, state, lambda: None)
            ray_s = time.perf_counter() - t
            assert all(it["status"] == "done" for it in state["items"]), "a Ray training failed"
            if started_here:
                ray.shutdown()
        finally:
            if old is None:
                os.environ.pop("FER_RUNS", None)
            else:
                os.environ["FER_RUNS"] = old
    doc = {
        "ray_cluster_start_s": round(start_s, 2),
        "ray_trainings": n,
        "ray_wall_s": round(ray_s, 2),
        "local_queue_wall_s": round(local_s, 2),
        "ray_overhead_per_run_s": round((ray_s - local_s) / n, 2),
        "ray_runs": f"{n} x cnn w0.1, 500 synthetic faces, {epochs} epoch(s), 2 at a time, 1 CPU each",
        "ray": ray_module.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    say(
        f"Ray: local cluster start {doc['ray_cluster_start_s']} s; {n} tiny trainings {doc['ray_wall_s']} s on "
        f"Ray vs {doc['local_queue_wall_s']} s in the local queue: {doc['ray_overhead_per_run_s']:+} s per run"
    )
    out = Path(out_dir) if out_dir else RESULTS_DIR / "bench"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench_ray.json", doc)
    say(f"written: {out / 'bench_ray.json'}")
    return doc


def face_latency(repeats: int = 300) -> dict:
    """Median ms to classify one face (batch 1, one thread) per model: eager torch against ONNX Runtime fp32,
    fp16-weights, int8 and quantization-aware int8 (calibrated on synthetic faces, not fine-tuned: timings do not
    depend on the weights)."""
    calib = make_split(256, seed=5, split_index=0)[0]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for f in ("mobilenet", "cnn"):
            m = create_model(f, 1.0).eval()
            fp32 = to_onnx(m)
            row = {"torch": latency_ms(m, repeats)}
            for fmt, blob in (
                ("onnx-fp32", fp32),
                ("onnx-fp16", weights_to_fp16(fp32)),
                ("onnx-int8", quantize_int8(fp32, calib)[0]),
                ("onnx-int8-qat", qat_to_onnx(_calibrated_qat(m, calib))),
            ):
                row[fmt] = latency_ms(ort_session(blob, threads=1), repeats)
            out[f"{f} w1.0"] = row
    finally:
        torch.set_num_threads(old)
    return out


def _calibrated_qat(model, faces: np.ndarray):
    """``model``'s quantization-aware network with its ranges set on ``faces`` (no fine-tuning)."""
    net = quant.prepare_qat(fold_batchnorm(model))
    x = normalize(torch.from_numpy(faces))
    quant.calibrate(net, [x[i : i + 64] for i in range(0, len(x), 64)])
    return quant.freeze(net)


def family_latency(repeats: int = 300, families=None) -> dict:
    """Every registered family (or ``families``) at the seed MobileNet's size (107,247 parameters; the MobileNet
    is the seed network itself): one face's latency (batch 1, one thread) in torch and ONNX Runtime fp32."""
    out = {}
    for f in families or list_models():
        w = family_width(f)
        m = create_model(f, w).eval()
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out[f] = {"width": w, "params": count_params(f, w), "torch_ms": latency_ms(m, repeats)}
            out[f]["onnx_fp32_ms"] = latency_ms(ort_session(to_onnx(m), threads=1), repeats)
        finally:
            torch.set_num_threads(old)
    return out


#: the families ``bench`` times as study lanes: the seed network, and the newer family whose layers are the
#: fastest-growing share of the study's hours
LANE_FAMILIES = ("mobilenet", "mobilenetv2")


def study_lanes(images: int, say, families=LANE_FAMILIES) -> list[dict] | None:
    """``study families --workers N`` on this CPU: N one-thread processes against one of N threads, for
    ``families`` (None with one core, or no family)."""
    cores = cpu_cores()
    if cores < 2 or not families:
        return None
    say(f"study lanes: {cores} one-thread processes at once against one process of {cores} threads:")
    rows = []
    for f in families:
        r = lanes_speed(images, cores, f, family_width(f))
        say(
            f"  {f:<13} one process {r['one_process_img_per_s']:8.1f} img/s · {cores} lanes "
            f"{r['lanes_img_per_s']:8.1f} img/s in all ({r['lanes_vs_one_process']:.2f}x)"
        )
        rows.append(r)
    return rows


def run_bench(
    images: int = 2560,
    frames: int = 50,
    out_dir: str | None = None,
    quiet: bool = False,
    device: str = "cpu",
    face_repeats: int = 300,
    families: list[str] | None = None,
) -> dict:
    """Run both benchmarks, print a table (unless quiet), write JSON under results/bench/, return it.
    ``families``: time only these at the seed size and as study lanes (default: every registered family at the
    seed size, :data:`LANE_FAMILIES` as lanes)."""
    say = (lambda *a: None) if quiet else print
    x, y = training_data(images)
    threads = torch.get_num_threads()
    say(f"training throughput on {device}, mobilenet w1.0, {images} images, batch 128, {threads} threads")
    naive = {}
    for workers in sorted({0, 2, min(8, os.cpu_count() or 1)}):
        # a user's own script: its own process, glibc's default allocator (nothing fer_core sets reaches it)
        naive[workers] = in_own_process("naive", images, workers=workers, device=device)["img_per_s"]
        say(f"  naive (own process, default allocator, DataLoader num_workers={workers}): {naive[workers]:8.1f} img/s")
    ours = engine_throughput(x, y, device=device)
    best_naive = max(naive.values())
    eager = cnn = None
    if device != "cpu":
        eager = engine_throughput(x, y, device=device, graph=False)
        say(f"  fer_core engine without the CUDA graph (eager):            {eager:8.1f} img/s")
        cnn = engine_throughput(x, y, device=device, family="cnn")
        say(f"  fer_core engine, cnn w1.0 (for reference):                 {cnn:8.1f} img/s")
    say(f"  fer_core engine (batched aug, channels_last):              {ours:8.1f} img/s")
    say(f"  speed-up vs the best naive configuration:                  {ours / best_naive:8.2f}x")
    lat, frames_by_runtime = {}, {}
    for runtime in ("torch", "onnxruntime"):
        try:
            r = frame_latency(frames, runtime)
        except Exception as e:  # no OpenCV cascades, no onnxruntime: keep the other numbers
            r = {"frame_latency_ms_median": None, "frame_error": f"{type(e).__name__}: {e}", "frame": runtime}
        frames_by_runtime[runtime] = r
        if r["frame_latency_ms_median"] is None:
            say(f"predict on a frame ({runtime}): not measured ({r['frame_error']})")
        else:
            say(
                f"predict on a {r['frame']}: median {r['frame_latency_ms_median']} ms "
                f"(p90 {r['frame_latency_ms_p90']} ms, detection {r['detect_ms_median']} ms)"
            )
    try:
        detectors = detector_latency(frames)
        say("face detection on the 640x480 frame: " + " · ".join(f"{k} {v} ms" for k, v in detectors.items()))
    except Exception as e:  # noqa: BLE001 - keep the other numbers
        detectors = {"error": f"{type(e).__name__}: {e}"}
        say(f"face detection: not measured ({detectors['error']})")
    # the headline frame numbers are what the dashboard does: ONNX Runtime when it works, else torch
    served = frames_by_runtime["onnxruntime"]
    lat = served if served["frame_latency_ms_median"] is not None else frames_by_runtime["torch"]
    try:
        live = live_latency(max(20, frames * 2))
        say(
            f"live video ({live['live']}): {live['live_fps']} fps sustained, per frame median "
            f"{live['live_frame_ms_median']} ms (p90 {live['live_frame_ms_p90']}): detect "
            f"{live['live_detect_ms_median']} ms (p90 {live['live_detect_ms_p90']}), classify "
            f"{live['live_classify_ms_median']} ms (p90 {live['live_classify_ms_p90']})"
        )
    except Exception as e:
        live = {"live_error": f"{type(e).__name__}: {e}"}
        say(f"live video: not measured ({live['live_error']})")
    try:
        faces = face_latency(face_repeats)
        for model, row in faces.items():
            say(
                f"one face, {model}, batch 1, 1 thread: "
                + " · ".join(f"{k} {v:.3f} ms" for k, v in row.items())
                + f" (onnx-fp32 {row['torch'] / row['onnx-fp32']:.1f}x faster than torch)"
            )
    except Exception as e:
        faces = {"error": f"{type(e).__name__}: {e}"}
        say(f"one-face latency: not measured ({faces['error']})")
    say(f"training, every family at ~{SEED_MOBILENET_PARAMS:,} parameters ({images} images, batch 128, {device}):")
    training = family_training(images, device, say, families)
    lanes = study_lanes(images, say, families or LANE_FAMILIES) if device == "cpu" else None
    try:
        by_family = family_latency(face_repeats, families)
        say(f"every family at ~{SEED_MOBILENET_PARAMS:,} parameters, one face (batch 1, 1 thread):")
        for f, r in by_family.items():
            r["train_img_per_s"] = training["families"][f]["train_img_per_s"]
            say(
                f"  {f:<13} w{r['width']:<6g} {r['params']:>8,} params: torch {r['torch_ms']:.3f} ms · ONNX "
                f"{r['onnx_fp32_ms']:.3f} ms"
            )
    except Exception as e:  # noqa: BLE001 - no onnxruntime: keep the other numbers
        by_family = {"error": f"{type(e).__name__}: {e}"}
        say(f"families: not measured ({by_family['error']})")
    doc = {
        "train_speedup_vs_naive": round(ours / best_naive, 3),
        "train_img_per_s_engine": round(ours, 1),
        "train_img_per_s_engine_eager": round(eager, 1) if eager else None,
        "train_img_per_s_engine_cnn": round(cnn, 1) if cnn else None,
        "train_img_per_s_naive": {f"num_workers={k}": round(v, 1) for k, v in naive.items()},
        "train_images": images,
        "train_device": device if device == "cpu" else torch.cuda.get_device_name(),
        **lat,
        "frame_by_runtime": frames_by_runtime,
        "detect_ms_by_detector": detectors,
        **live,
        "face_latency_ms": faces,
        "families_at_seed_size": by_family,
        "training_at_seed_size": training,
        "study_lanes": lanes,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(out_dir) if out_dir else RESULTS_DIR / "bench"
    out.mkdir(parents=True, exist_ok=True)
    name = "bench.json" if device == "cpu" else "bench_cuda.json"
    atomic_write_json(out / name, doc)
    say(f"written: {out / name}")
    return doc


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_bench(), indent=2))
