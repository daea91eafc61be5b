"""Structured pruning as a way to make a run: the budget is reached, the network is real (forward, a training
step, ONNX parity), the run's lineage is saved, and the run is listed, loaded, plotted, tried and resumed."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_config
from fer_core.analysis.compare import runs_frame
from fer_core.analysis.figures import scatter
from fer_core.common import FerError
from fer_core.data.sources import load
from fer_core.models import create_model
from fer_core.models.layers import fit_shapes
from fer_core.models.stats import count_trainable
from fer_core.store.loading import load_torch_model
from fer_core.store.runs import find_run
from fer_core.training.pruning import prune_config, prune_to, schedule, step_targets
from fer_core.training.trainer import fit

pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic")


def _faces(n=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


@pytest.mark.parametrize(
    "family, width, share, importance",
    [
        ("mobilenet", 1.0, 0.45, "l1"),
        ("mobilenet", 1.0, 0.1, "bn"),
        ("mobilenetv2", 0.5, 0.3, "l2"),
        ("cnn", 0.3, 0.05, "taylor"),
    ],
)
def test_pruning_reaches_the_budget_and_leaves_a_real_network(family, width, share, importance):
    torch.manual_seed(0)
    model = create_model(family, width)
    target = round(count_trainable(model) * share)
    x = torch.from_numpy(_faces(256))
    y = torch.randint(0, 7, (256,))
    pruned = prune_to(model, target, importance, (x, y))
    n = count_trainable(pruned)
    assert abs(n - target) <= 0.05 * target, (n, target)
    assert count_trainable(model) > n  # the parent is left as it was
    # every depthwise conv is still depthwise, the classifier still has 7 outputs
    for m in pruned.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    assert pruned(torch.randn(4, 1, 48, 48)).shape == (4, 7)
    # a training step changes the weights and lowers nothing into NaN
    opt = torch.optim.Adam(pruned.parameters(), 1e-3)
    before = [p.detach().clone() for p in pruned.parameters()]
    pruned.train()
    loss = torch.nn.functional.cross_entropy(pruned(torch.randn(8, 1, 48, 48)), torch.randint(0, 7, (8,)))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, pruned.parameters()))
    # its state dict alone rebuilds it: the family at the parent's width, fitted to the weights
    rebuilt = fit_shapes(create_model(family, width), pruned.state_dict())
    rebuilt.load_state_dict(pruned.state_dict())
    probe = torch.randn(4, 1, 48, 48)
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval()(probe), pruned.eval()(probe))


def test_what_cannot_be_pruned_is_refused_with_the_reason():
    from fer_core.training.pruning import check_prunable

    with pytest.raises(FerError, match="shufflenetv2 cannot be pruned: its channel split"):
        check_prunable("shufflenetv2")
    with pytest.raises(FerError, match="not below"):
        prune_to(create_model("mobilenet", 0.5), 10**7)
    with pytest.raises(FerError, match="within 5%"):
        prune_to(create_model("mobilenet", 0.5), 50)
    with pytest.raises(FerError, match="prune.importance"):
        prune_to(create_model("mobilenet", 0.5), 10_000, "random")


def test_steps_are_spread_over_the_first_half_and_geometric_in_parameters():
    assert schedule(30, 1) == [1] and schedule(30, 3) == [1, 6, 11] and schedule(3, 2) == [1, 2]
    targets = step_targets(100_000, 10_000, 2)
    assert targets == [31623, 10000]


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(epochs=2)
    cfg.model.family, cfg.model.width = "mobilenet", 0.5
    return fit(cfg, data=synthetic, root=root), root


@pytest.fixture
def parent(trained, monkeypatch):
    """A trained run to prune, in the runs folder every test here uses."""
    summary, root = trained
    monkeypatch.setenv("FER_RUNS", str(root))
    return summary


def _prune_cfg(parent, budget=10_000, steps=2, epochs=3):
    cfg = prune_config(parent["run_id"], budget, "l1", steps)
    cfg.data.data, cfg.data.limit, cfg.data.augment = "synthetic", 2000, False
    cfg.train.epochs, cfg.train.batch_size, cfg.train.threads = epochs, 64, 1
    return cfg.validate()


def test_a_pruned_run_has_its_lineage_loads_exports_and_shows_everywhere(synthetic, parent):
    from fer_core.serving.inference import demo_frame, predict
    from fer_core.serving.models import load_model
    from fer_core.serving.onnx import ort_session, parity, to_onnx

    s = fit(_prune_cfg(parent), data=synthetic)
    assert s["status"] == "completed", s.get("error")
    assert abs(s["params"] - 10_000) <= 500 and s["params"] < parent["params"]
    assert s["pruned_from"] == parent["run_id"] and s["prune_importance"] == "l1"
    lin = s["lineage"]["prune"]
    assert lin["parent"]["run_id"] == parent["run_id"] and lin["parent"]["params"] == parent["params"]
    assert (lin["method"], lin["importance"], lin["steps"], lin["epochs"], lin["budget"]) == (
        "structured channel pruning",
        "l1",
        2,
        3,
        10_000,
    )
    assert lin["library"].startswith("torch-pruning ")
    run = find_run(s["run_id"])
    rows = run.metrics()
    assert [r["params"] for r in rows][0] > rows[-1]["params"] == s["params"]  # two steps: epoch 1, then epoch 2
    assert s["best_epoch"] >= 2  # only the final network competes for the best weights
    saved = json.loads(run.config_file.read_text())
    assert saved["prune"] == {"parent": parent["run_id"], "importance": "l1", "steps": 2}

    lm = load_torch_model(s["run_id"])
    assert count_trainable(lm.model) == s["params"]
    faces = _faces()
    assert parity(lm.model, ort_session(to_onnx(lm.model, {"family": "mobilenet"})), faces)["max_prob_diff"] < 1e-4

    df = runs_frame()
    row = df[df["run_id"] == s["run_id"]].iloc[0]
    assert row["lineage_kind"] == "pruned" and f"pruned from {parent['run_id']}" in row["lineage"]
    fig = scatter(df, y="private_acc")
    symbols = {t.name: t.marker.symbol for t in fig.data if t.marker is not None and t.name}
    assert "diamond" in json.dumps([t.marker.symbol for t in fig.data if t.marker is not None], default=str)
    assert symbols  # a legend

    res = predict(np.stack([demo_frame()] * 3, -1), [load_model(s["run_id"])])
    assert res.faces and abs(sum(res.faces[0].predictions[0].probabilities.values()) - 1) < 1e-5


def test_a_pruned_run_resumes_from_its_pruned_checkpoint(synthetic, parent, tmp_path):
    from fer_core.store.runs import Run

    class Stop(Exception):
        pass

    def stop_after(n):
        def on_event(e):
            if e["type"] == "epoch" and e["epoch"] == n:
                raise Stop

        return on_event

    cfg = _prune_cfg(parent, steps=2, epochs=4)
    with pytest.raises(Stop):
        fit(cfg, on_event=stop_after(2), root=tmp_path / "cut")
    run = Run(next((tmp_path / "cut").iterdir()))
    ck = torch.load(run.checkpoint_file, weights_only=True)
    assert (
        sum(v.numel() for k, v in ck["model"].items() if "running" not in k and "num_batches" not in k)
        < (parent["params"])
    )
    resumed = fit(cfg, run=run, resume=True, data=synthetic)
    straight = fit(cfg, root=tmp_path / "straight", data=synthetic)
    assert resumed["status"] == straight["status"] == "completed"
    assert resumed["params"] == straight["params"] and resumed["private_acc"] == straight["private_acc"]
    assert resumed["confusion_public"] == straight["confusion_public"]


def test_the_prune_command(parent, tmp_path):
    env = {"FER_RUNS": str(find_run(parent["run_id"]).path.parent)}
    r = run_cli("prune", parent["run_id"], "--budget", "1e4", "--print-config", env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["prune"]["parent"] == parent["run_id"] and cfg["model"]["budget"] == 1e4
    assert cfg["model"]["width"] == 0.5 and cfg["train"]["epochs"] == 30 and cfg["train"]["schedule"] == "cosine"
    # train --prune-from is the same run: the parent's family and width, the budget it is cut to
    r = run_cli("train", "--prune-from", parent["run_id"], "--budget", "1e4", "--print-config", env=env)
    assert r.returncode == 0, r.stderr
    flags = json.loads(r.stdout)
    assert flags["model"] == {**cfg["model"], "dropout": flags["model"]["dropout"]} and flags["prune"] == cfg["prune"]
    r = run_cli(
        "prune",
        parent["run_id"],
        "--budget",
        "1e4",
        "--epochs",
        "1",
        "--data",
        "synthetic",
        "--limit",
        "500",
        "--out",
        str(tmp_path),
        "--json",
        "--quiet",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pruned_from"] == parent["run_id"] and abs(doc["params"] - 1e4) <= 500
    for args, said in [
        (["no-such-run", "--budget", "1e4"], "no run 'no-such-run'"),
        ([parent["run_id"], "--budget", "1e9"], "must be below"),
        ([parent["run_id"], "--budget", "1e4", "--steps", "40"], "prune.steps"),
    ]:
        bad = run_cli("prune", *args, env=env)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_the_train_page_queues_pruned_runs_and_names_a_bad_budget(parent, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from fer_core.jobs.queue import item_config, list_jobs

    monkeypatch.setenv("FER_DATA", "synthetic")
    monkeypatch.setattr("fer_core.jobs.queue.subprocess.Popen", lambda *a, **k: None)  # queue it, train nothing
    at = AppTest.from_file(str(ROOT / "pages/1_Train.py"), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    pick = next(s for s in at.selectbox if s.label == "run to prune")
    assert any(parent["run_id"] in o for o in pick.options)
    pick.set_value(parent["run_id"]).run()
    budgets = next(t for t in at.text_input if t.label.startswith("budgets"))
    budgets.set_value("1e4, lots").run()
    next(b for b in at.button if b.label == "Start pruning").click().run()
    assert any("budgets: 'lots' is not a number" in e.value for e in at.error), [e.value for e in at.error]
    assert not list_jobs()
    budgets.set_value("1e4, 2e4").run()
    next(s for s in at.selectbox if s.label == "which channels go").set_value("bn").run()
    next(b for b in at.button if b.label == "Start pruning").click().run()
    assert any("2 pruned runs" in s.value for s in at.success), [e.value for e in at.error]
    cfgs = [item_config(i) for i in list_jobs()[0]["items"]]
    assert [c["model"]["budget"] for c in cfgs] == [1e4, 2e4]
    assert all(c["prune"] == {"parent": parent["run_id"], "importance": "bn", "steps": 1} for c in cfgs)


def test_pruned_minus_scratch_interpolates_the_family_at_the_pruned_size():
    import pandas as pd

    from fer_core.analysis.compare import pruned_vs_scratch

    base = {"status": "completed", "data": "fer2013", "recipe": "seed", "format": "torch", "pruned_from": None}
    rows = [
        {**base, "run_id": "m-a0", "family": "mobilenet", "params": 10_000, "private_acc": 0.50, "seed": 0},
        {**base, "run_id": "m-a1", "family": "mobilenet", "params": 10_000, "private_acc": 0.52, "seed": 1},
        {**base, "run_id": "m-b", "family": "mobilenet", "params": 100_000, "private_acc": 0.60, "seed": 0},
        {**base, "run_id": "c-b", "family": "cnn", "params": 100_000, "private_acc": 0.70, "seed": 0},  # other family
        {**base, "run_id": "m-x", "family": "mobilenet", "params": 30_000, "private_acc": 0.9, "recipe": "better"},
        {
            **base,
            "run_id": "m-p",
            "family": "mobilenet",
            "params": 31_623,
            "private_acc": 0.58,
            "recipe": "seed-cosine",
            "pruned_from": "m-b",
            "prune_importance": "l1",
            "prune_steps": 1,
            "epochs": 10,
        },
        {**base, "run_id": "m-q", "family": "mobilenet", "params": 5_000, "private_acc": 0.4, "pruned_from": "m-b"},
    ]
    out = pruned_vs_scratch(pd.DataFrame(rows))
    assert list(out["run_id"]) == ["m-p"]  # m-q lies outside the scratch runs' sizes: no extrapolation
    r = out.iloc[0]
    assert r["scratch_acc_interp"] == pytest.approx(0.51 + 0.5 * (0.60 - 0.51), abs=1e-3)  # halfway in log10
    assert r["diff"] == pytest.approx(0.58 - r["scratch_acc_interp"])
    assert r["scratch_sd"] == pytest.approx(np.std([0.50, 0.52], ddof=1))
    assert (r["parent"], r["parent_params"], r["parent_acc"], r["steps"]) == ("m-b", 100_000, 0.60, 1)


def test_the_compare_page_and_command_show_pruned_against_scratch(synthetic, parent, tmp_path):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    small = tiny_config(epochs=2)
    small.model.family, small.model.width = "mobilenet", 0.25
    fit(small, data=synthetic)
    s = fit(_prune_cfg(parent, budget=15_000, steps=1, epochs=2), data=synthetic)
    r = run_cli("compare", "--y", "public_acc", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["pruned_vs_scratch"]
    mine = next(x for x in rows if x["run_id"] == s["run_id"])
    assert mine["pruned_acc"] == s["public_acc"] and mine["parent"] == parent["run_id"]
    text = run_cli("compare", "--y", "public_acc").stdout
    assert "pruned against scratch" in text and s["run_id"] in text
    at = AppTest.from_file(str(ROOT / "pages/2_Compare.py"), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(h.value.startswith("Pruned against scratch") for h in at.subheader)
    table = next(d.value for d in at.dataframe if "scratch_acc_interp" in d.value.columns)
    assert s["run_id"] in set(table["run_id"])
    assert table.loc[table["run_id"] == s["run_id"], "diff"].iloc[0] == pytest.approx(mine["diff"])
