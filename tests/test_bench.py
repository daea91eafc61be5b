"""The benchmark runs end to end and writes its JSON (speed itself is measured by `python -m fer_core bench`)."""

import json

import pytest

from fer_core.models.fused import kernel_status
from fer_core.studies.bench import run_bench


@pytest.mark.slow
def test_bench_writes_the_figures_it_promises(tmp_path):
    doc = run_bench(images=384, frames=2, out_dir=str(tmp_path), quiet=True, face_repeats=5)
    assert doc["train_speedup_vs_naive"] > 0 and doc["frame_latency_ms_median"] > 0 and doc["faces"] == 1
    assert set(doc["train_img_per_s_naive"]) == {"num_workers=0", "num_workers=2"}
    assert doc["frame_by_runtime"]["torch"]["frame_latency_ms_median"] > 0
    assert doc["frame_by_runtime"]["onnxruntime"]["frame_latency_ms_median"] > 0
    assert doc["frame"].endswith("onnxruntime"), "the headline frame time is the dashboard's runtime"
    for model in ("mobilenet w1.0", "cnn w1.0"):
        assert set(doc["face_latency_ms"][model]) == {"torch", "onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int8-qat"}
        assert all(v > 0 for v in doc["face_latency_ms"][model].values())
    assert doc["live_fps"] > 0 and doc["live_faces_per_frame"] == 1 and doc["live_detect_ms_median"] > 0
    training = doc["training_at_seed_size"]
    assert training["memory_bandwidth_gbs"] > 0
    assert set(training["families"]) >= {"mobilenet", "cnn", "mobilenetv2", "shufflenetv2"}
    for row in training["families"].values():
        assert row["train_img_per_s"] > 0 and row["train_img_per_s_default_allocator"] > 0
        assert row["est_bytes_per_image"] > 0 and row["share_of_memory_limit"] > 0
        assert row["page_faults_per_step"] >= 0 and row["page_faults_per_step_default_allocator"] >= 0
    mobilenet = training["families"]["mobilenet"]
    # the default allocator (own process) faults the seed MobileNet's activations in on every step; ours does not
    assert mobilenet["page_faults_per_step_default_allocator"] > 10 * max(1.0, mobilenet["page_faults_per_step"])
    from fer_core.training.device import cpu_cores

    if cpu_cores() >= 2:  # study families --workers: one-thread lanes against one process, both measured
        assert [r["family"] for r in doc["study_lanes"]] == ["mobilenet", "mobilenetv2"]
        for r in doc["study_lanes"]:
            assert r["lanes"] == cpu_cores() == len(r["lanes_each_img_per_s"]) and min(r["lanes_each_img_per_s"]) > 0
            assert r["one_process_img_per_s"] > 0 and r["lanes_img_per_s"] > 0
            assert abs(r["lanes_vs_one_process"] - r["lanes_img_per_s"] / r["one_process_img_per_s"]) < 0.01
    assert json.loads((tmp_path / "bench.json").read_text()) == doc


def test_the_live_soak_reports_memory_and_threads_at_start_and_end(tmp_path):
    from conftest import run_cli

    out = run_cli("bench", "--soak", "240", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert doc["soak_frames"] == 240 and len(doc["soak_points"]) == 10 and doc["soak_points"][-1]["frame"] == 240
    assert doc["soak_start"]["rss_mb"] > 0 and doc["soak_start"]["threads"] >= 1 and doc["soak_error"] is None
    assert doc["soak_rss_growth_mb"] == round(doc["soak_end"]["rss_mb"] - doc["soak_start"]["rss_mb"], 1)
    assert 0.5 < doc["soak_faces_per_frame"] < 1.0  # the clip has empty frames; the faces are found
    assert "live soak, 240 frames" in out.stdout and "goal (< 20 MB, no new threads)" in out.stdout


def test_bench_lanes_writes_what_workers_buy_here(tmp_path):
    from conftest import run_cli
    from fer_core.training.device import cpu_cores

    out = run_cli("bench", "--lanes", "--images", "384", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "lanes.json").read_text())
    assert doc["train_images"] == 384
    if cpu_cores() < 2:
        assert doc["study_lanes"] is None and "one core here" in out.stdout
        return
    assert [r["family"] for r in doc["study_lanes"]] == ["mobilenet", "mobilenetv2"]
    assert f"{cpu_cores()} one-thread processes at once" in out.stdout and "written:" in out.stdout


@pytest.mark.slow
def test_bench_levers_times_each_lever_undone_in_its_own_process(tmp_path):
    from conftest import run_cli

    # one family without faster layers and one with them: both kinds of row, at half the CI time of all four
    families = ["mobilenet", "shufflenetv2"]
    args = ["bench", "--levers", "--images", "384", "--rounds", "1", "--out", str(tmp_path), "--families"]
    out = run_cli(*args, *families)
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "levers.json").read_text())
    rows = doc["families"]
    assert set(rows) == set(families) and doc["threads"] == 1
    bad = run_cli(*args, "mobilenet", "resnet")
    assert bad.returncode != 0 and "no family named resnet" in bad.stderr and "Traceback" not in bad.stderr
    for family, row in rows.items():
        assert row["shipped"]["huge_pages"] is False and row["huge_pages"]["huge_pages"] is True  # as it says
        has_plain = family == "shufflenetv2"  # the family here with faster layers
        assert ("plain_layers" in row) == has_plain, family
        assert (row["shipped"]["faster_layers"] > 0) == has_plain  # the timed networks are what each row says
        assert not has_plain or row["plain_layers"]["faster_layers"] == 0
        # the fused BatchNorm kernel where this machine compiles it (CI does), PyTorch's own with FER_FUSED=0
        assert (row["shipped"]["fused_bn_act"] > 0) == (kernel_status()["mode"] == "fused")
        assert row["unfused"]["fused_bn_act"] == 0
        alone = row["allocator_alone"]  # every lever put back at once
        assert alone["huge_pages"] is True and alone["fused_bn_act"] == 0 and alone["faster_layers"] == 0
        levers = ("huge_pages", "unfused", "allocator_alone") + (("plain_layers",) if has_plain else ())
        for lever in levers:
            r = row[lever]
            a, b = row["shipped"]["img_per_s"], r["img_per_s"]  # each rounded to 0.1, the ratio to 0.001
            bound = a / b * (0.05 / a + 0.05 / b) + 5e-4  # both roundings of the speeds, then the ratio's own
            assert b > 0 and abs(r["shipped_vs_this"] - a / b) <= bound * 1.01, (family, lever, r, a)
    assert "shufflenetv2" in out.stdout and "written:" in out.stdout
