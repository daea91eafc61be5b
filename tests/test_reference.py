"""The reference study's plan, its time-fitting, and shipping runs with fp16 weights."""

import pytest
import torch

from conftest import tiny_config
from fer_core.data.sources import load
from fer_core.models import count_params
from fer_core.serving.models import load_model
from fer_core.store.files import load_weights_file
from fer_core.store.runs import find_run
from fer_core.studies import reference
from fer_core.training.config import RunConfig
from fer_core.training.trainer import fit


def test_the_plan_covers_what_the_study_needs():
    plan = reference.plan()
    for family, lo, hi in (("mobilenet", 2e4, 1e6), ("cnn", 2e4, 6e6)):
        widths = {it["width"] for it in plan if it["family"] == family and it["recipe"] == "seed"}
        params = sorted(count_params(family, w) for w in widths)
        assert len(widths) >= 5 and 1.0 in widths
        assert params[0] <= lo * 1.1 and params[-1] >= hi * 0.9
    mob = {count_params("mobilenet", it["width"]) for it in plan if it["family"] == "mobilenet"}
    cnn = {count_params("cnn", it["width"]) for it in plan if it["family"] == "cnn"}
    matched = [m for m in mob if any(abs(c / m - 1) <= 0.10 for c in cnn)]
    assert len(matched) >= 3
    q4 = [it for it in plan if it["role"] == "q4"]
    assert sorted((it["family"], it["seed"]) for it in q4) == [(f, s) for f in ("cnn", "mobilenet") for s in (0, 1, 2)]
    assert {it["recipe"] for it in plan} == {"seed", "better"}


@pytest.mark.slow
def test_run_reference_fits_the_epochs_into_the_window(monkeypatch, tmp_path):
    items = [
        {"family": "cnn", "width": 0.1, "seed": 0, "recipe": "seed", "role": "sweep"},
        {"family": "mobilenet", "width": 0.25, "seed": 0, "recipe": "seed", "role": "sweep"},
    ]
    monkeypatch.setattr(reference, "plan", lambda better=True: items)
    base = RunConfig()
    base.data.data, base.train.device, base.train.threads = "synthetic:140", "cpu", 1
    rec = reference.run_reference(epochs=1000, fit_in=60, parallel=2, base=base, out=str(tmp_path / "runs"))
    assert 1 <= rec["epochs"] < 1000  # a thousand epochs do not fit in a minute: lowered, for both alike
    assert rec["calibration"]["slowest_epoch_s"] > 0
    assert [r["exit"] for r in rec["results"]] == [0, 0]
    epochs = {find_run(str(tmp_path / "runs" / r["run"])).summary()["epochs"] for r in rec["results"]}
    assert epochs == {rec["epochs"]}


def test_export_ships_fp16_weights_that_predict_like_the_original(tmp_path):
    s = fit(tiny_config(epochs=1), data=load("synthetic"))
    run = find_run(s["run_id"])
    out = reference.export_run(run, tmp_path / "ref")
    payload = load_weights_file(out / "weights_fp16.pt")
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    a, b = load_model(run.path).model, load_model(out).model
    x = torch.randn(8, 1, 48, 48)
    assert torch.allclose(torch.softmax(a(x), 1), torch.softmax(b(x), 1), atol=0.02)
    shipped = find_run(str(out)).config()
    assert shipped["data"]["data"] is None  # no path of the trainer's machine travels with it


def test_an_interrupted_study_is_completed_with_the_runs_it_lacks(tmp_path):
    from fer_core.common import FerError
    from fer_core.store.runs import Run

    done = tmp_path / "ref"
    first = reference.plan()[-1]
    run = Run.create(first["family"], first["width"], first["seed"], root=done)
    run.update_summary(
        status="completed",
        family=first["family"],
        width=first["width"],
        seed=first["seed"],
        recipe=first["recipe"],
        epochs=95,
    )
    left = reference.missing(reference.plan(), done, 95)
    assert len(left) == len(reference.plan()) - 1 and first not in left
    with pytest.raises(FerError, match="trained 95 epochs, not 100"):
        reference.missing(reference.plan(), done, 100)
