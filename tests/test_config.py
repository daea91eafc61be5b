"""One RunConfig travels: it round-trips, it is validated field by field, and every command reads it."""

import json

import pytest

from conftest import run_cli
from fer_core.common import FerError
from fer_core.training.config import RECIPES, RunConfig, apply_recipe, recipe_table


def test_a_config_round_trips_through_json():
    cfg = apply_recipe(RunConfig(), "strong")
    cfg.model.family, cfg.model.width = "cnn", 0.25
    cfg.distill.teachers, cfg.init = ["some-run"], None
    cfg.data.aug.scale = (0.8, 1.2)
    back = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and back.data.aug.scale == (0.8, 1.2)


def test_an_old_config_without_the_new_fields_still_loads():
    old = {"model": {"family": "mobilenet", "width": 1.0}, "train": {"epochs": 95, "optimizer": "adam"}}
    cfg = RunConfig.from_dict(old)
    assert cfg.train.epochs == 95 and cfg.train.ema_decay == 0.0 and cfg.distill.teachers == []


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"train": {"lrr": 0.1}}, "unknown field train.lrr"),
        ({"bogus": 1}, "unknown field bogus"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number"),
        ({"train": {"epochs": 2.5}}, "train.epochs must be a whole number"),
        ({"data": {"augment": "yes"}}, "data.augment must be true or false"),
        ({"distill": {"teachers": "run-a"}}, "distill.teachers must be a list"),
        ({"data": {"aug": {"scale": [1.0]}}}, "data.aug.scale must be a list of 2 numbers"),
    ],
)
def test_a_bad_value_names_its_field(patch, message):
    with pytest.raises(FerError, match=message):
        RunConfig.from_dict(patch)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.lr", -1.0, "train.lr = -1.0: must be a positive number"),
        ("train.optimizer", "rmsprop", "unknown optimizer"),
        ("train.mix_prob", 1.5, "train.mix_prob"),
        ("train.ema_decay", 1.0, "train.ema_decay"),
        ("distill.alpha", 2.0, "distill.alpha"),
        ("distill.temperature", 0.0, "distill.temperature"),
        ("model.family", "resnet", "model.family"),
        ("recipe", "magic", "unknown recipe"),
    ],
)
def test_validation_names_the_field_and_the_rule(field, value, message):
    cfg = RunConfig()
    *head, last = field.split(".")
    target = cfg
    for part in head:
        target = getattr(target, part)
    setattr(target, last, value)
    with pytest.raises(FerError, match=message):
        cfg.validate()


def test_recipes_set_their_fields_and_reset_the_others():
    cfg = apply_recipe(RunConfig(), "strong")
    assert cfg.train.mixup > 0 and cfg.train.cutmix > 0 and cfg.train.ema_decay > 0
    apply_recipe(cfg, "sgd")
    assert cfg.train.optimizer == "sgd" and cfg.train.mixup == 0.0  # strong's mixing does not leak into sgd
    apply_recipe(cfg, "seed")
    assert cfg.train == RunConfig().train and cfg.recipe == "seed"
    table = recipe_table()
    assert [r["name"] for r in table] == list(RECIPES) and all(r["about"] for r in table)


def test_recipes_command_lists_every_recipe_with_its_settings():
    r = run_cli("recipes", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(RECIPES)
    assert rows["seed"]["settings"]["train.optimizer"] == "adam" and rows["sgd"]["settings"]["train.optimizer"] == "sgd"


def test_train_reads_a_config_file_and_flags_override_it(tmp_path):
    r = run_cli("train", "--model", "cnn", "--width", "0.1", "--recipe", "better", "--epochs", "3", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["recipe"] == "better" and cfg["train"]["optimizer"] == "adamw" and cfg["train"]["epochs"] == 3
    path = tmp_path / "run.json"
    path.write_text(r.stdout)
    r = run_cli("train", "--config", str(path), "--seed", "7", "--lr", "0.01", "--print-config")
    again = json.loads(r.stdout)
    assert again["train"]["seed"] == 7 and again["train"]["lr"] == 0.01 and again["train"]["epochs"] == 3
    assert again["model"] == cfg["model"]


def test_a_bad_config_file_exits_2_naming_the_file_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": {"family": "cnn"}, "train": {"warmup": 3}}))
    r = run_cli("train", "--config", str(path))
    assert r.returncode == 2 and "bad.json" in r.stderr and "unknown field train.warmup" in r.stderr
    path.write_text("{not json")
    r = run_cli("train", "--config", str(path))
    assert r.returncode == 2 and "bad.json: not valid JSON" in r.stderr
    r = run_cli("train", "--model", "cnn", "--kd-alpha", "3", "--data", "synthetic")
    assert r.returncode == 2 and "distill.alpha = 3.0" in r.stderr
    assert r.stderr.count("\n") == 1  # one line, no traceback


def test_auto_picks_cuda_then_apples_mps_then_the_cpu():
    from fer_core.training.device import auto_device

    assert auto_device(has_cuda=True, has_mps=True) == "cuda"
    assert auto_device(has_cuda=True, has_mps=False) == "cuda"
    assert auto_device(has_cuda=False, has_mps=True) == "mps"
    assert auto_device(has_cuda=False, has_mps=False) == "cpu"


def test_a_device_this_machine_lacks_is_refused_by_name():
    import torch

    from fer_core.training.device import mps_available, resolve_device

    RunConfig.from_dict({"train": {"device": "mps"}}).validate()  # a valid name, whatever this machine has
    if not mps_available():
        with pytest.raises(FerError, match="mps was asked for"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(FerError, match="cuda was asked for"):
            resolve_device("cuda")
    with pytest.raises(FerError, match="unknown device 'tpu'"):
        resolve_device("tpu")
