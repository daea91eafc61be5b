"""The command-line contract: JSON that parses, exit code 2 with one clear line for bad input."""

import json
import pickle

import cv2
import numpy as np
import pytest
import torch

from conftest import run_cli
from fer_core.common import FerError
from fer_core.models import create_model
from fer_core.serving.inference import demo_frame


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_models_and_describe():
    rows = _json(run_cli("models", "--json"))
    assert {r["name"]: r["params"] for r in rows}["mobilenet-seed"] == 107_247
    d = _json(run_cli("describe", "mobilenet", "--json"))
    assert d["params"] == 107_247 and d["state_values"] == 109_761 and d["macs"] == 9_865_532
    assert "DepthwiseSeparable" in d["architecture"]
    d = _json(run_cli("describe", "cnn", "--budget", "1e5", "--json"))
    assert abs(d["params"] / 1e5 - 1) < 0.1 and d["budget"] == 1e5


def test_data_says_synthetic_clearly():
    d = _json(run_cli("data", "--data", "synthetic", "--json"))
    assert d["data"] == "synthetic" and d["synthetic"] is True and sum(d["counts"]["train"]) == d["sizes"]["train"]
    r = run_cli("data", "--data", "synthetic")
    assert "NOT FER2013" in r.stdout


def test_bad_input_exits_2_with_one_line(tmp_path):
    r = run_cli("data", "--data", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "missing.csv" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("describe", "resnet")
    assert r.returncode == 2 and "unknown model 'resnet'" in r.stderr
    r = run_cli("eval", "no-such-run")
    assert r.returncode == 2 and "no run 'no-such-run'" in r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    r = run_cli(
        "train",
        "--model",
        "mobilenet",
        "--width",
        "0.25",
        "--data",
        "synthetic",
        "--limit",
        "256",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--json",
        env={"FER_RUNS": str(out)},
    )
    summary = _json(r)
    return out, summary


def test_train_prints_its_summary_and_runs_lists_it(trained):
    out, s = trained
    assert s["status"] == "completed" and s["epochs_done"] == 1 and s["data"] == "synthetic"
    rows = _json(run_cli("runs", "--json", env={"FER_RUNS": str(out)}))
    row = next(r for r in rows if r["run_id"] == s["run_id"])
    for key in [
        "run_id",
        "family",
        "width",
        "params",
        "bytes_fp16",
        "public_acc",
        "private_acc",
        "status",
        "epochs_done",
        "seed",
        "data",
    ]:
        assert key in row
    assert row["data"] == "synthetic"


def test_eval_a_run_by_id_folder_or_weights_file(trained):
    out, s = trained
    env = {"FER_RUNS": str(out)}
    for ref in (s["run_id"], str(out / s["run_id"]), str(out / s["run_id"] / "weights.pt")):
        e = _json(run_cli("eval", ref, "--split", "public", "--data", "synthetic", "--json", env=env))
        assert e["accuracy"] == pytest.approx(s["public_acc"], abs=1e-6)


def test_predict_finds_the_drawn_face(trained, tmp_path):
    out, s = trained
    img = tmp_path / "frame.png"
    cv2.imwrite(str(img), demo_frame(5, seed=3))
    p = _json(run_cli("predict", str(img), "--runs", s["run_id"], "--json", env={"FER_RUNS": str(out)}))
    assert len(p["faces"]) == 1 and p["faces"][0]["predictions"][0]["model"] == s["run_id"]
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200), 128, np.uint8))
    r = run_cli("predict", str(blank), "--runs", s["run_id"], env={"FER_RUNS": str(out)})
    assert r.returncode == 0 and "no face found" in r.stdout


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": evil}, f)
    img = tmp_path / "frame.png"
    cv2.imwrite(str(img), demo_frame())
    r = run_cli("predict", str(img), "--runs", str(path))
    assert r.returncode == 2 and "refused" in r.stderr and "nothing of it was executed" in r.stderr
    assert not evil.marker.exists()


def test_a_bare_state_dict_is_matched_at_any_width_of_up_to_4_digits_off_the_grid_too():
    import random

    from fer_core.models import list_models
    from fer_core.store.loading import _infer_arch, _state_shapes

    rng = random.Random()  # widths drawn at run time: 3 and 4 significant digits, mostly between grid points
    drawn = [(f, float(f"{rng.uniform(0.05, 2.5):.{d}g}")) for f in list_models() for d in (3, 4)]
    for family, width in [("cnn", 0.743), *drawn]:  # 0.743: a network the 1% grid steps over, refused before
        with torch.device("meta"):
            state = create_model(family, width).state_dict()
        found, at = _infer_arch(state)
        assert found == family and _state_shapes(family, at) == _state_shapes(family, width), (family, width)
    state["classifier.weight"] = torch.zeros(3, 3)  # a tensor no family has: said, after a bounded search
    with pytest.raises(FerError, match="do not match any registered family at any width"):
        _infer_arch(state)


def test_a_bare_state_dict_is_matched_to_its_architecture(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(create_model("cnn", 0.3).state_dict(), path)
    img = tmp_path / "frame.png"
    cv2.imwrite(str(img), demo_frame())
    p = _json(run_cli("predict", str(img), "--runs", str(path), "--json"))
    assert p["faces"][0]["predictions"][0]["model"] == "plain.pt"
    torch.save({"features.0.0.weight": torch.zeros(3, 1, 3, 3)}, path)
    r = run_cli("predict", str(img), "--runs", str(path))
    assert r.returncode == 2 and "do not match any registered family" in r.stderr


def test_sweep_plans_matched_budgets():
    r = run_cli("sweep", "--models", "mobilenet,cnn", "--budgets", "3e4,1e5", "--seeds", "0,1", "--dry-run")
    assert r.returncode == 0
    assert r.stderr.count("mobilenet ") == 4 and r.stderr.count("cnn ") == 4
    r = run_cli("sweep", "--models", "vgg", "--budgets", "1e5")
    assert r.returncode == 2 and "unknown model 'vgg'" in r.stderr


def test_status_and_jobs_print_json():
    st = _json(run_cli("status", "--data", "synthetic", "--json"))
    assert st["data"]["ok"] and st["data"]["synthetic"] is True and st["device"]["device"] in ("cpu", "cuda")
    assert _json(run_cli("jobs", "--json")) == []
    r = run_cli("status", "--data", "/no/such/file.csv", "--json")
    assert _json(r)["data"] == {
        "ok": False,
        "error": "data path /no/such/file.csv does not exist",
        "synthetic": None,
        "data": None,
    }
    r = run_cli("cancel", "nothing-like-this")
    assert r.returncode == 2 and "no run 'nothing-like-this'" in r.stderr
