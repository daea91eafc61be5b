"""Freed memory stays in the process: in force in a real trainer, and what it saves, counted in page faults."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from fer_core.common.memory import ENV, child_env, tune_allocator


def _train(tmp_path, env: dict) -> tuple[dict, list[dict]]:
    """A real `train` process: the seed MobileNet (its activations are what the allocator frees), 2 epochs of
    512 synthetic faces; returns its summary and metrics."""
    out = tmp_path / ("runs-" + env.get("FER_MALLOC", "kept"))
    e = {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["--model", "mobilenet", "--width", "1", "--data", "synthetic", "--limit", "512", "--epochs", "2"]
    p = subprocess.run(
        [sys.executable, "-m", "fer_core", "train", *args, "--threads", "1", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=e,
        cwd=ROOT,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    (run,) = out.iterdir()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run / "summary.json").read_text()), metrics


@pytest.mark.slow
def test_a_trainer_keeps_freed_memory_and_faults_far_less_than_with_the_default_allocator(tmp_path):
    plain_env = {k: v for k, v in os.environ.items() if k not in ENV} | {"FER_MALLOC": "default"}
    kept, kept_metrics = _train(tmp_path, {k: v for k, v in os.environ.items() if k not in ENV})
    plain, plain_metrics = _train(tmp_path, plain_env)
    assert kept["allocator"] == {"mode": "kept", "mallopt": True, "thp": False}  # huge pages measured slower
    assert plain["allocator"]["mode"] == "default" and plain["allocator"]["mallopt"] is False
    # the second epoch: the first pays for growing the heap once
    kept_faults, plain_faults = kept_metrics[-1]["page_faults_per_step"], plain_metrics[-1]["page_faults_per_step"]
    assert plain_faults > 20_000, "the default allocator should fault the activations in on every step"
    assert kept_faults < plain_faults / 20, (kept_faults, plain_faults)


def test_children_inherit_the_settings_and_a_users_own_value_is_kept(monkeypatch):
    assert tune_allocator()["mode"] == "kept"  # this test process imported fer_core too
    assert child_env() == {k: os.environ[k] for k in ENV}
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert child_env()["MALLOC_MMAP_THRESHOLD_"] == "65536"
    monkeypatch.setenv("FER_MALLOC", "default")
    assert child_env() == {}


def test_the_queue_starts_trainers_with_the_settings(monkeypatch):
    from fer_core.jobs.queue import _env

    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    env = _env()
    assert {k: env[k] for k in ENV} == ENV
