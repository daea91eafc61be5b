"""Shared fixtures: one CPU thread, and every run, cache and data file in a temporary folder."""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)
# one folder for the compiled CPU kernel (models.fused) for the whole session, its subprocesses included: each
# test's own cache folder would compile it again for every training a test starts
if "FER_KERNELS" not in os.environ:
    _kernels = tempfile.mkdtemp(prefix="fer-kernels-")
    os.environ["FER_KERNELS"] = _kernels
    atexit.register(shutil.rmtree, _kernels, ignore_errors=True)  # not one more folder left behind per session


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may use, and at most one per 4 GiB of memory (a margin
    for the trainings, servers and browser a test starts beside it)."""
    from fer_core.training.device import cpu_cores

    try:
        gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not every system names these
        return min(cpu_cores(), 2)
    return max(1, min(cpu_cores(), int(gib // 4)))


def pytest_collection_modifyitems(config, items) -> None:
    """The tests marked ``slow`` (minutes each) first, so that the workers end together instead of one of them
    starting a ten-minute test when the others are done; the rest keep their order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Runs and caches go to tmp_path; the user's results/runs and ~/.cache are never touched, and the
    shipped reference runs stay out of the listings (tests of them name their folder)."""
    monkeypatch.setenv("FER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FER_REFERENCE", str(tmp_path / "no-reference"))
    monkeypatch.setenv("FER_STUDIES", str(tmp_path / "no-studies"))
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))
    yield tmp_path


@pytest.fixture
def no_fer_data(monkeypatch):
    monkeypatch.delenv("FER_DATA", raising=False)


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 300, file_size_limit: int | None = None
) -> subprocess.CompletedProcess:
    """``python -m fer_core ARGS`` in a subprocess, as a user would run it; ``file_size_limit`` (bytes) makes
    every larger write fail as a full disk would (RLIMIT_FSIZE)."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "fer_core", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=ROOT,
        preexec_fn=limit if file_size_limit else None,
    )


def tiny_config(**train):
    """A run that finishes in seconds on one CPU thread: a small CNN on 2,000 synthetic faces."""
    from fer_core.training.config import RunConfig

    cfg = RunConfig()
    cfg.model.family, cfg.model.width = "cnn", 0.1
    cfg.data.data, cfg.data.limit, cfg.data.augment = "synthetic", 2000, False
    cfg.train.epochs, cfg.train.lr, cfg.train.batch_size = 6, 3e-3, 64
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def wait_until(pred, what: str = "the condition", timeout: float = 240.0, poll: float = 0.2):
    """Poll ``pred`` until it is true (the event a test waits for, never a fixed sleep); fail after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
