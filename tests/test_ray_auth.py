"""Ray with token authentication: where the token comes from, its file kept private, and a real local cluster
started with RAY_AUTH_MODE=token that trains for a client holding its token and refuses, in one line, a client
without it or with a wrong one."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import run_cli
from fer_core.common import FerError
from fer_core.jobs import ray_auth
from fer_core.studies.serve_bench import free_port

pytestmark = pytest.mark.xdist_group("ray")  # one worker starts the Ray clusters: two at once share ports


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder with no Ray token, and no token in the environment."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    return h


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_token_is_found_where_ray_looks_in_rays_order(home, monkeypatch, tmp_path):
    assert ray_auth.token_source() is None
    default = home / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("t1")
    assert ray_auth.token_source() == str(default)
    named = tmp_path / "named"
    named.write_text("t2\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert ray_auth.token_source() == str(named)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t3")
    assert ray_auth.token_source() == "$RAY_AUTH_TOKEN"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    named.write_text("")
    with pytest.raises(FerError, match=r"RAY_AUTH_TOKEN_PATH=.*named: the Ray token file is empty"):
        ray_auth.token_source()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(FerError, match=r"cannot read the Ray token file"):
        ray_auth.token_source()


def test_a_token_file_readable_by_others_is_made_private(home):
    path = home / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text("t")
    os.chmod(path, 0o644)  # as `ray get-auth-token --generate` (Ray 2.60) and a local ray.init() leave it
    notes = ray_auth.secure_token_files()
    assert _mode(path) == 0o600
    assert notes == [f"made the Ray token file {path} readable by its owner only (it was 0644)"]
    assert ray_auth.secure_token_files() == []


def test_ray_token_generates_a_private_token_and_never_overwrites_one_silently(home):
    out = run_cli("ray-token", "--generate", env={"HOME": str(home)})
    path = home / ".ray" / "auth_token"
    assert out.returncode == 0, out.stderr
    assert _mode(path) == 0o600 and len(path.read_text()) == 64 and path.read_text() not in out.stdout
    assert f"Ray token: {path}" in out.stdout
    again = run_cli("ray-token", "--generate", env={"HOME": str(home)})
    assert again.returncode == 2 and "already holds a token (use --force" in again.stderr


def test_the_refusal_says_what_to_do():
    cause = "RuntimeError: Failed to connect to GCS ... Unauthenticated: InvalidAuthToken"
    assert ray_auth.refusal("h:6379", None, cause).startswith("the Ray cluster at h:6379 asks for a token")
    assert ray_auth.refusal("h:6379", "$RAY_AUTH_TOKEN", cause) == (
        "the Ray cluster at h:6379 refused the token from $RAY_AUTH_TOKEN: use the token the cluster was started with"
    )
    assert ray_auth.refusal("h:6379", None, "ConnectionError: timed out") is None


# ------------------------------------------------------------------------------------------- a real token cluster


@pytest.fixture(scope="module")
def token_cluster():
    """A one-CPU Ray head started with RAY_AUTH_MODE=token (its own token file, home and temp folder)."""
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists():
        pytest.skip("the ray command is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="rt"))  # short: Ray's socket paths must fit in 107 bytes
    token = tmp / "token"
    token.write_text(os.urandom(32).hex())
    os.chmod(token, 0o600)
    (tmp / "home").mkdir()
    port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "HOME": str(tmp / "home"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    log = open(tmp / "head.log", "wb")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "1"]
        + ["--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(tmp / "r")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while b"Ray runtime started" not in (tmp / "head.log").read_bytes():
            assert head.poll() is None and time.time() < deadline, (tmp / "head.log").read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", token
    finally:
        # the head alone: it drains the node through its GCS, then stops its processes (1.7 s here); the same
        # signal to its whole group stopped the GCS first, and the head waited out its 30 s drain timeout
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever it left behind
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


SWEEP = ["sweep", "--models", "cnn", "--widths", "0.1", "--epochs", "1", "--limit", "128", "--data", "synthetic"]


def _client_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


def test_a_client_with_the_token_trains_on_the_token_cluster(token_cluster, home, isolated_store):
    address, token = token_cluster
    shutil.copy(token, tmp := home / "token-copy")
    os.chmod(tmp, 0o644)  # RAY_AUTH_MODE is not set: the token found is enough, and its file is made private
    out = run_cli(*SWEEP, "--ray", address, env=_client_env(home, RAY_AUTH_TOKEN_PATH=str(tmp)), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _mode(tmp) == 0o600 and "readable by its owner only (it was 0644)" in out.stderr
    runs = [p for p in (isolated_store / "runs").iterdir() if (p / "summary.json").is_file()]
    assert len(runs) == 1 and '"backend": "ray"' in (runs[0] / "summary.json").read_text()
    assert '"completed"' in (runs[0] / "summary.json").read_text()


@pytest.mark.parametrize("given", ["none", "wrong"])
def test_a_client_without_the_right_token_is_refused_in_one_line(token_cluster, home, isolated_store, given):
    address, _ = token_cluster
    extra = {"RAY_AUTH_TOKEN": "not-the-token"} if given == "wrong" else {}
    out = run_cli(*SWEEP, "--ray", address, env=_client_env(home, **extra), timeout=300)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if not line.startswith(("sweep:", "  cnn"))]
    expected = {
        "none": f"error: the Ray cluster at {address} asks for a token (RAY_AUTH_MODE=token) and none was found here",
        "wrong": f"error: the Ray cluster at {address} refused the token from $RAY_AUTH_TOKEN: use the token",
    }[given]
    assert len(errors) == 1 and errors[0].startswith(expected), out.stderr[-3000:]
    assert not (isolated_store / "runs" / ".jobs").exists()  # refused before anything was queued


def test_an_address_where_nothing_answers_is_said_at_once():
    from fer_core.jobs.ray_backend import _check_reachable

    address = f"127.0.0.1:{free_port()}"  # free, so nothing listens there
    with pytest.raises(FerError, match=rf"nothing answers at {address} \(Connection refused\)"):
        _check_reachable(address)
    with pytest.raises(FerError, match=r"nothing answers at ray://127\.0\.0\.1:"):
        _check_reachable(f"ray://{address}")
    for resolved_by_ray in (None, "auto", "local"):
        _check_reachable(resolved_by_ray)
