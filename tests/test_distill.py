"""Distillation and fine-tuning end to end: teachers and init runs load safely, lineage is recorded everywhere."""

import json

import pytest
import torch

from conftest import run_cli, tiny_config
from fer_core.analysis.compare import runs_frame, two_run_card
from fer_core.analysis.figures import scatter
from fer_core.common import FerError
from fer_core.data.sources import load
from fer_core.store.runs import find_run
from fer_core.training.config import apply_recipe
from fer_core.training.trainer import fit


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic")


@pytest.fixture
def teacher(synthetic):
    return fit(tiny_config(epochs=2), data=synthetic)


def _student(teacher_id, **train):
    cfg = tiny_config(epochs=2, **train)
    cfg.model.family, cfg.model.width = "mobilenet", 0.25
    cfg.distill.teachers = [teacher_id]
    return cfg


def test_a_distilled_run_records_its_teacher(synthetic, teacher):
    s = fit(_student(teacher["run_id"]), data=synthetic)
    assert s["status"] == "completed" and s["distilled"] is True
    assert s["teacher"] == teacher["run_id"] and s["teacher_private_acc"] == teacher["private_acc"]
    lin = s["lineage"]
    assert lin["teachers"][0]["run_id"] == teacher["run_id"] and lin["teachers"][0]["family"] == "cnn"
    assert lin["distill"] == {"temperature": 4.0, "alpha": 0.9} and lin["init"] is None
    saved = json.loads((find_run(s["run_id"]).path / "config.json").read_text())
    assert saved["distill"]["teachers"] == [teacher["run_id"]]


def test_two_teachers_and_a_weights_file_work(synthetic, teacher):
    weights = find_run(teacher["run_id"]).path / "weights.pt"
    other = fit(tiny_config(epochs=1, seed=1), data=synthetic)
    cfg = _student(str(weights))
    cfg.distill.teachers.append(other["run_id"])
    s = fit(cfg, data=synthetic)
    assert [t["run_id"] for t in s["lineage"]["teachers"]] == [teacher["run_id"], other["run_id"]]
    assert s["teacher"] == f"{teacher['run_id']} + {other['run_id']}"


def _params(run_id):
    state = torch.load(find_run(run_id).path / "weights.pt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def test_fine_tuning_starts_from_the_init_weights(synthetic, teacher):
    cfg = tiny_config(epochs=1)
    apply_recipe(cfg, "finetune")
    cfg.init = teacher["run_id"]
    cfg.train.lr = 1e-9  # practically no step: the weights must stay where the teacher's ended
    s = fit(cfg, data=synthetic)
    assert s["init_run"] == teacher["run_id"] and s["lineage"]["init"]["private_acc"] == teacher["private_acc"]
    tuned, start = _params(s["run_id"]), _params(teacher["run_id"])
    assert all(torch.allclose(tuned[k], start[k], atol=1e-5) for k in start)
    cfg.init = None  # the same run from a fresh initialisation lands elsewhere
    fresh = _params(fit(cfg, data=synthetic)["run_id"])
    assert not all(torch.allclose(fresh[k], start[k], atol=1e-2) for k in start)


def _curve(run_id):
    return [(r["loss"], r["public_acc"]) for r in find_run(run_id).metrics()]


def test_the_teacher_changes_training_only_through_its_weighted_term(synthetic, teacher):
    plain = tiny_config(epochs=2)
    plain.model.family, plain.model.width = "mobilenet", 0.25
    a = fit(plain, data=synthetic)
    weightless = _student(teacher["run_id"])
    weightless.distill.alpha = 0.0
    b = fit(weightless, data=synthetic)
    assert _curve(b["run_id"]) == _curve(a["run_id"])  # alpha = 0: exactly the plain run, end to end
    c = fit(_student(teacher["run_id"]), data=synthetic)
    assert _curve(c["run_id"]) != _curve(a["run_id"])


def test_mixup_and_cutmix_reach_the_training_step(synthetic):
    base = fit(tiny_config(epochs=1), data=synthetic)
    mixed = fit(tiny_config(epochs=1, mixup=0.4, cutmix=1.0), data=synthetic)
    again = fit(tiny_config(epochs=1, mixup=0.4, cutmix=1.0), data=synthetic)
    assert _curve(mixed["run_id"]) != _curve(base["run_id"])
    assert _curve(mixed["run_id"]) == _curve(again["run_id"])  # mixing draws from the epoch's seed: repeatable


def test_init_must_match_family_and_width(synthetic, teacher):
    cfg = tiny_config(epochs=1)
    cfg.model.width = 0.2
    cfg.init = teacher["run_id"]
    with pytest.raises(FerError, match="init: .* is a cnn of width 0.1, but this run trains a cnn of width 0.2"):
        fit(cfg, data=synthetic)


def test_a_missing_teacher_fails_before_any_data_loads(monkeypatch, tmp_path):
    import fer_core.training.trainer as train_mod

    monkeypatch.setattr(train_mod, "load", lambda *a: pytest.fail("data was loaded before the teacher was checked"))
    with pytest.raises(FerError, match="distill.teachers: 'no-such-run'"):
        fit(_student("no-such-run"))
    r = run_cli("train", "--model", "cnn", "--teacher", "no-such-run", "--data", "synthetic", "--out", str(tmp_path))
    assert r.returncode == 2 and "no-such-run" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no empty run folder left behind


def test_ema_weights_are_selected_on_public_accuracy_and_both_reported(synthetic):
    cfg = tiny_config(epochs=3, ema_decay=0.9)
    s = fit(cfg, data=synthetic)
    cands = s["weights_candidates"]
    assert set(cands) == {"raw", "ema"} and s["selected_weights"] in cands
    best = max(cands, key=lambda k: (cands[k]["public_acc"], k == "raw"))
    assert s["selected_weights"] == best and s["public_acc"] == cands[best]["public_acc"]
    rows = find_run(s["run_id"]).metrics()
    assert all("public_acc_ema" in r for r in rows)
    assert torch.load(find_run(s["run_id"]).path / "weights.pt", weights_only=True)["weights"] == best


def test_lineage_reaches_runs_json_the_table_and_the_two_run_card(synthetic, teacher):
    s = fit(_student(teacher["run_id"]), data=synthetic)
    r = run_cli("runs", "--json")
    row = next(x for x in json.loads(r.stdout) if x["run_id"] == s["run_id"])
    assert row["teacher"] == teacher["run_id"] and row["lineage"]["teachers"][0]["run_id"] == teacher["run_id"]
    df = runs_frame().set_index("run_id")
    assert df.loc[s["run_id"], "lineage_kind"] == "distilled" and df.loc[teacher["run_id"], "lineage_kind"] == "plain"
    assert f"taught by {teacher['run_id']}" in df.loc[s["run_id"], "lineage"]
    card = two_run_card([s["run_id"], teacher["run_id"]])[0]
    assert "taught by" in card["lineage"] and "T=4, alpha=0.9" in card["lineage"]
    fig = scatter(runs_frame(), "params", "public_acc")
    student = next(t for t in fig.data if t.mode == "markers" and t.x[0] is not None and s["run_id"] in t.customdata)
    assert student.marker.symbol == "star" and "distilled" in student.name  # star: distilled; filled: torch weights
    hover = student.hovertext[list(student.customdata).index(s["run_id"])]
    assert f"taught by {teacher['run_id']}" in hover


def test_train_init_takes_the_model_from_the_init_run(synthetic, teacher):
    r = run_cli("train", "--init", teacher["run_id"], "--recipe", "finetune", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["model"]["family"] == "cnn" and cfg["model"]["width"] == 0.1 and cfg["init"] == teacher["run_id"]


def test_replayed_teacher_targets_equal_a_live_teacher_on_the_same_view(synthetic, teacher):
    from fer_core.data.augment import normalize, warp
    from fer_core.store.loading import load_torch_model
    from fer_core.training.engine import ReplayedTeachers, Teachers

    cfg = _student(teacher["run_id"])
    cfg.distill.views, cfg.data.augment = 3, True
    live = Teachers([load_torch_model(teacher["run_id"]).model], cfg.distill.temperature)
    x = torch.from_numpy(synthetic.split("train")[0][:300].copy())
    replay = ReplayedTeachers(live, x, cfg, torch.device("cpu"), batch_size=128)
    assert replay.probs.shape == (300, 3, 7) and replay.forwards == 900
    torch.manual_seed(0)
    idx = torch.randperm(300)[:64]
    xs, probs = replay.view(idx)
    torch.manual_seed(0)
    torch.randperm(300)
    k = torch.randint(3, (64,))  # the views view() drew
    assert len(set(k.tolist())) > 1  # several views in one batch
    seen = warp(normalize(x[idx]), replay.theta[idx, k])
    assert torch.equal(xs, seen)
    with torch.no_grad():
        assert torch.allclose(probs, live(seen), atol=1e-6)
    # the views are real augmentations (not the image itself) and rebuild the same from the run's seed
    assert not torch.allclose(seen, normalize(x[idx]))
    again = ReplayedTeachers(live, x, cfg, torch.device("cpu"), batch_size=100)
    assert torch.equal(again.theta, replay.theta) and torch.allclose(again.probs, replay.probs, atol=1e-6)


def test_a_replayed_distillation_trains_and_says_what_its_teacher_cost(synthetic, teacher):
    cfg = _student(teacher["run_id"])
    cfg.distill.views, cfg.data.augment = 2, True
    s = fit(cfg.validate(), data=synthetic)
    assert s["status"] == "completed" and s["distilled"] is True
    assert s["teacher_replay"]["views"] == 2 and s["teacher_replay"]["forwards"] == 2 * 2000
    saved = json.loads((find_run(s["run_id"]).path / "config.json").read_text())
    assert saved["distill"]["views"] == 2
    assert s["teacher_replay"]["cached"] is False


def test_a_second_student_of_the_same_teachers_reads_their_table_instead_of_paying_again(synthetic, teacher, tmp_path):
    from fer_core.store.loading import load_torch_model
    from fer_core.training.engine import ReplayedTeachers, Teachers

    cfg = _student(teacher["run_id"])
    cfg.distill.views, cfg.data.augment = 2, True
    live = Teachers([load_torch_model(teacher["run_id"]).model], cfg.distill.temperature)
    x = torch.from_numpy(synthetic.split("train")[0][:200].copy())
    first = ReplayedTeachers(live, x, cfg, torch.device("cpu"), cache=tmp_path)
    (table,) = tmp_path.glob("*.pt")
    again = ReplayedTeachers(live, x, cfg, torch.device("cpu"), cache=tmp_path)
    assert first.forwards == 400 and again.forwards == 0 and torch.equal(again.probs, first.probs)
    # anything the table depends on makes another: the seed (other views), the temperature, the images
    cfg.train.seed = 1
    assert ReplayedTeachers(live, x, cfg, torch.device("cpu"), cache=tmp_path).forwards == 400
    live.temperature = 2.0
    assert ReplayedTeachers(live, x, cfg, torch.device("cpu"), cache=tmp_path).forwards == 400
    assert ReplayedTeachers(live, x[:100], cfg, torch.device("cpu"), cache=tmp_path).forwards == 200
    assert len(list(tmp_path.glob("*.pt"))) == 4
    # a damaged table is computed again and rewritten
    cfg.train.seed, live.temperature = 0, cfg.distill.temperature
    table.write_bytes(b"not a tensor")
    fixed = ReplayedTeachers(live, x, cfg, torch.device("cpu"), cache=tmp_path)
    assert fixed.forwards == 400 and torch.allclose(fixed.probs, first.probs, atol=1e-6)
    assert ReplayedTeachers(live, x, cfg, torch.device("cpu"), cache=tmp_path).forwards == 0

    # through fit: the second student's summary says its teachers cost nothing
    a = fit(cfg.validate(), data=synthetic)
    b = fit(cfg, data=synthetic)
    assert a["teacher_replay"]["cached"] is False and a["teacher_replay"]["forwards"] > 0
    assert b["teacher_replay"] == {**b["teacher_replay"], "cached": True, "forwards": 0}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"views": 2, "teachers": []}, "distill.views"),
        ({"views": -1}, "distill.views"),
        ({"views": 2, "mixup": 0.2}, "distill.views"),
        ({"views": 2, "photometric": 0.5}, "distill.views"),
    ],
)
def test_replay_refuses_what_it_cannot_replay(change, field):
    cfg = _student("some-teacher")
    cfg.distill.views = change["views"]
    if "teachers" in change:
        cfg.distill.teachers = change["teachers"]
    cfg.train.mixup = change.get("mixup", 0.0)
    cfg.data.aug.photometric = change.get("photometric", 0.0)
    with pytest.raises(FerError, match=field):
        cfg.validate()
