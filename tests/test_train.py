"""The training engine: it learns, it is deterministic, it resumes, it records honestly."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_config, wait_until
from fer_core.common import FerError
from fer_core.data.augment import AugmentConfig, augment_batch, normalize
from fer_core.data.sources import load
from fer_core.models import create_model
from fer_core.store.runs import Run, find_run
from fer_core.training.config import RunConfig, apply_recipe
from fer_core.training.engine import Step, lr_at, make_optimizer
from fer_core.training.trainer import fit


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic")


def test_a_tiny_batch_is_overfitted():
    data = load("synthetic")
    x, y = torch.from_numpy(data.train_x[:32]), torch.from_numpy(data.train_y[:32])
    torch.manual_seed(0)
    cfg = RunConfig()
    cfg.data.augment = False
    model = create_model("mobilenet", 0.5, dropout=0.0)
    step = Step(model, make_optimizer(model, cfg, torch.device("cpu"), False), x, y, cfg, torch.device("cpu"))
    idx = torch.arange(32)
    losses = []
    for _ in range(60):
        step.reset_sums()
        step(idx)
        losses.append(step.loss_sum.item())
    assert losses[-1] < 0.1 * losses[0]


def test_synthetic_faces_are_learnable(synthetic):
    s = fit(tiny_config(), data=synthetic)
    assert s["status"] == "completed" and s["data"] == "synthetic" and s["data_synthetic"] is True
    assert s["public_acc"] > 0.25 and s["private_acc"] > 0.25  # chance is 1/7 = 0.143


def _metrics(run_id):
    """Per-epoch rows without the timing and memory fields (which differ between any two runs)."""
    timing = {"img_per_s", "epoch_s", "elapsed_s", "eta_s", "page_faults_per_step"}
    return [{k: v for k, v in r.items() if k not in timing} for r in find_run(run_id).metrics()]


def test_same_seed_same_run_on_cpu(synthetic):
    a = fit(tiny_config(epochs=2), data=synthetic)
    b = fit(tiny_config(epochs=2), data=synthetic)
    assert _metrics(a["run_id"]) == _metrics(b["run_id"])
    assert a["public_acc"] == b["public_acc"] and a["confusion_private"] == b["confusion_private"]
    c = fit(tiny_config(epochs=2, seed=1), data=synthetic)
    assert _metrics(c["run_id"]) != _metrics(a["run_id"])


def test_summary_records_what_the_run_was(synthetic):
    s = fit(tiny_config(epochs=2), data=synthetic)
    for key in [
        "family",
        "width",
        "params",
        "state_values",
        "bytes_fp32",
        "bytes_fp16",
        "macs",
        "latency_ms_cpu",
        "public_acc",
        "private_acc",
        "per_class_public",
        "per_class_private",
        "confusion_public",
        "confusion_private",
        "epochs_done",
        "wall_s",
        "img_per_s",
        "device",
        "seed",
        "data",
        "data_fingerprint",
        "status",
        "public_acc_flip_tta",
        "private_acc_flip_tta",
    ]:
        assert key in s, key
    assert s["epochs_done"] == 2 and s["device"] == "cpu" and "pid" not in s
    assert sum(map(sum, s["confusion_private"])) == len(synthetic.private_y)
    assert s["data_fingerprint"] == synthetic.fingerprint


def test_model_selection_uses_the_best_public_epoch(synthetic):
    s = fit(tiny_config(epochs=4), data=synthetic)
    rows = find_run(s["run_id"]).metrics()
    best = max(rows, key=lambda r: r["public_acc"])
    assert s["best_epoch"] == best["epoch"]
    assert s["public_acc"] == pytest.approx(best["public_acc"], abs=1e-6)  # the saved weights are that epoch's


def test_weights_load_with_weights_only(synthetic):
    s = fit(tiny_config(epochs=1), data=synthetic)
    path = find_run(s["run_id"]).path / "weights.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["model"]["family"] == "cnn" and payload["classes"][3] == "happy"
    assert payload["run_id"] == s["run_id"]


def _train_argv(out, epochs):
    return [
        "train",
        "--model",
        "cnn",
        "--width",
        "0.1",
        "--data",
        "synthetic",
        "--limit",
        "2000",
        "--no-augment",
        "--epochs",
        str(epochs),
        "--lr",
        "3e-3",
        "--batch-size",
        "64",
        "--out",
        str(out),
        "--quiet",
    ]


def _start_training(out, epochs):
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fer_core", *_train_argv(out, epochs)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_killed_run_shows_failed_and_resumes_to_the_same_result(tmp_path):
    out = tmp_path / "runs"
    proc = _start_training(out, 4)
    wait_until(lambda: any(out.glob("*/checkpoint.pt")), "a checkpoint", timeout=120, poll=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = Run(next(out.iterdir()))
    assert run.summary()["status"] == "failed"  # its process is gone: not "running" forever
    assert "died" in run.summary()["error"]
    done_before = json.loads(run.checkpoint_file.with_name("summary.json").read_text()).get("epochs_done", 0)
    assert done_before < 4

    r = run_cli("train", "--resume", str(run.path), "--quiet")
    assert r.returncode == 0, r.stderr
    resumed = run.summary()
    assert resumed["status"] == "completed" and resumed["epochs_done"] == 4
    assert [m["epoch"] for m in run.metrics()] == [1, 2, 3, 4]
    assert not run.checkpoint_file.exists()

    r = run_cli(*_train_argv(tmp_path / "straight", 4))
    straight = Run(next((tmp_path / "straight").iterdir())).summary()
    assert straight["confusion_public"] == resumed["confusion_public"]  # resuming changed nothing
    assert straight["private_acc"] == resumed["private_acc"]


def test_sigterm_cancels_and_records_it(tmp_path):
    out = tmp_path / "runs"
    proc = _start_training(out, 50)
    wait_until(lambda: any(out.glob("*/metrics.jsonl")), "a metrics file", timeout=120, poll=0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    s = Run(next(out.iterdir())).summary()
    assert s["status"] == "cancelled" and s["epochs_done"] < 50


def test_a_second_stop_while_the_first_is_recorded_does_not_cut_the_record_short(tmp_path, synthetic, monkeypatch):
    """A study's worker gets SIGTERM twice when its whole process group is signalled (``pkill``, a service
    manager): once from the signal, once from its parent. The second once came while the first was writing the
    run's summary, escaped ``fit`` and left the summary saying 'running' with the dead pid. Here the second stop
    comes exactly there."""
    from fer_core.training import stops

    real_update = Run.update_summary

    def update_with_a_second_stop(run, **fields):
        if fields.get("status") == "cancelled":
            stops.cancel(stops.Cancelled("second"))  # what the SIGTERM handler calls
        return real_update(run, **fields)

    def first_stop(event):
        if event["type"] == "epoch" and event["epoch"] == 2:
            stops.cancel(stops.Cancelled("first"))

    monkeypatch.setattr(Run, "update_summary", update_with_a_second_stop)
    summary = fit(tiny_config(epochs=5), on_event=first_stop, data=synthetic, root=tmp_path)
    run = Run(next(tmp_path.iterdir()))
    assert summary["status"] == run.summary()["status"] == "cancelled" and run.summary()["error"] == "first"
    assert run.summary()["epochs_done"] == 2 and "pid" not in run.summary() and run.checkpoint_file.is_file()
    with pytest.raises(stops.Cancelled):  # recorded: the next stop is a new one, raised at once
        stops.cancel()


def test_bad_training_settings_are_clear_errors(synthetic):
    with pytest.raises(FerError, match="epochs must be at least 1"):
        fit(tiny_config(epochs=0), data=synthetic)
    with pytest.raises(FerError, match="unknown optimizer"):
        fit(tiny_config(optimizer="sgdx"), data=synthetic)
    with pytest.raises(FerError, match="unknown device"):
        fit(tiny_config(device="tpu"), data=synthetic)
    if not torch.cuda.is_available():
        with pytest.raises(FerError, match="no CUDA GPU"):
            fit(tiny_config(device="cuda"), data=synthetic)


def test_learning_rate_schedules():
    cfg = apply_recipe(RunConfig(), "better")
    cfg.train.epochs = 20
    lrs = [lr_at(cfg, e) for e in range(1, 21)]
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(cfg.train.lr)  # warm-up, then the peak
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 0.01 * cfg.train.lr  # cosine to ~0
    seed = RunConfig()
    assert {lr_at(seed, e) for e in range(1, 11)} == {1e-3}
    assert cfg.recipe == "better" and cfg.train.label_smoothing == 0.1


def test_augmentation_is_batched_shape_preserving_and_random():
    x = normalize(torch.from_numpy(load("synthetic").train_x[:16]))
    torch.manual_seed(0)
    a = augment_batch(x, AugmentConfig())
    b = augment_batch(x, AugmentConfig())
    assert a.shape == x.shape and not torch.equal(a, b)
    same = augment_batch(x, AugmentConfig(flip=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0)))
    assert torch.allclose(same, x, atol=1e-5)  # the identity warp leaves images untouched
    flipped = augment_batch(x, AugmentConfig(flip=1.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0)))
    assert torch.allclose(flipped, x.flip(3), atol=1e-5)
    assert math.isclose(float(normalize(torch.tensor([[[0, 255]]], dtype=torch.uint8)).sum()), 0.0)
    assert np.isfinite(a.numpy()).all()
