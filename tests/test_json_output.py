"""`--json` means one JSON document on stdout, for every command that takes it; bad config JSON exits 2."""

from __future__ import annotations

import json

import cv2
import pytest

from conftest import run_cli
from fer_core.cli import build_parser
from fer_core.serving.inference import demo_frame


def _json_commands() -> set[str]:
    """Every command (``study beyond``: a command with subcommands counts each) that takes --json."""

    def walk(parser, prefix: str):
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            if any("--json" in a.option_strings for a in parser._actions):
                yield prefix
            return
        for name, p in subs[0].choices.items():
            yield from walk(p, f"{prefix} {name}".strip())

    return set(walk(build_parser(), ""))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One tiny trained run (trained by `train --json`, itself under test) and a photo with a face."""
    root = tmp_path_factory.mktemp("json")
    env = {"FER_RUNS": str(root / "runs"), "FER_REFERENCE": str(root / "none"), "FER_CACHE": str(root / "cache")}
    r = run_cli(
        "train", "--model", "mobilenet", "--width", "0.25", "--data", "synthetic:140", "--epochs", "1",
        "--quiet", "--json", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    photo = root / "face.png"
    cv2.imwrite(str(photo), demo_frame())
    return {"env": env, "run": run_id, "photo": str(photo), "root": root}


def _exported(s) -> list[str]:
    """The run with an int8 variant (exported here if the export-onnx case has not yet)."""
    r = run_cli("export-onnx", s["run"], "--formats", "int8", "--calibration-images", "32", env=s["env"])
    assert r.returncode == 0, r.stderr[-2000:]
    return [s["run"]]


def _tiny_study(folder):
    folder.mkdir(exist_ok=True)
    plan = {"protocol": {"epochs": 1}, "runs": [{"family": "cnn", "width": 0.1, "seed": 0}]}
    (folder / "plan.json").write_text(json.dumps(plan))
    return folder


#: Each command that takes --json, with arguments that make it quick on synthetic data.
CASES = {
    "models": lambda s: [],
    "describe": lambda s: ["mobilenet", "--budget", "2e4"],
    "status": lambda s: ["--data", "synthetic"],
    "data": lambda s: ["--data", "synthetic:140"],
    "recipes": lambda s: [],
    "train": lambda s: ["--model", "cnn", "--width", "0.1", "--data", "synthetic:140", "--epochs", "1", "--quiet"],
    "prune": lambda s: [s["run"], "--budget", "3000", "--data", "synthetic:140", "--epochs", "1", "--quiet"],
    "sweep": lambda s: ["--budgets", "2e4,5e4", "--data", "synthetic", "--dry-run"],
    "reference": lambda s: ["--dry-run"],
    "study beyond": lambda s: ["--dry-run", "--out", str(s["root"] / "beyond")],
    "study families": lambda s: ["--out", str(_tiny_study(s["root"] / "families")), "--status"],
    # int8 calibration is where ONNX Runtime prints its progress to stdout
    "export-onnx": lambda s: [
        s["run"],
        "--formats",
        "fp16,int8",
        "--calibration-images",
        "32",
        "--data",
        "synthetic:140",
    ],
    "int8-sensitivity": lambda s: [
        s["run"],
        "--data",
        "synthetic:140",
        "--calibration-images",
        "32",
        "--out",
        str(s["root"] / "int8"),
    ],  # fmt: skip
    "format-cost": lambda s: _exported(s),
    "compare": lambda s: [],
    "jobs": lambda s: [],
    "ray-token": lambda s: ["--generate", str(s["root"] / "ray-token")],  # a token file of its own
    "eval": lambda s: [s["run"], "--split", "public"],
    "runs": lambda s: [],
    "predict": lambda s: [s["photo"], "--runs", s["run"]],
    "face-template": lambda s: ["--data", "synthetic:140", "--limit", "60", "--out", str(s["root"] / "t.json")],
    "eval-faces": lambda s: [s["run"], "--data", "synthetic:140", "--frames", "1", "--split", "public"],
    "bench": lambda s: [
        *("--images", "256", "--frames", "2", "--face-repeats", "3", "--families", "cnn", "--out", str(s["root"] / "b"))
    ],
}


def test_every_json_command_is_covered():
    assert _json_commands() == set(CASES)


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=pytest.mark.slow) if c == "bench" else c for c in sorted(CASES)]
)
def test_json_stdout_is_one_document(store, command):
    r = run_cli(*command.split(), *CASES[command](store), "--json", env=store["env"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)  # the whole of stdout, nothing before or after the document
    if command == "bench":  # --families cnn: only the CNN timed, at the seed size and as study lanes
        assert set(doc["training_at_seed_size"]["families"]) == set(doc["families_at_seed_size"]) == {"cnn"}
        assert doc["study_lanes"] is None or [r["family"] for r in doc["study_lanes"]] == ["cnn"]  # None: one core


BAD_JSON = {
    "deep-lists": "[" * 100_000,
    "deep-objects": "{" * 50_000,
    "deep-valid-prefix": '{"train": ' * 5_000,
    "cut-short": '{"model": ',
    "not-utf8": "\xff\xfe not text",
    "a-list": "[1, 2]",
    "empty": "",
}


@pytest.mark.parametrize(
    "command, text",
    [("train", t) for t in BAD_JSON.values()] + [("sweep", BAD_JSON["deep-lists"])],
    ids=[f"train-{k}" for k in BAD_JSON] + ["sweep-deep-lists"],
)
def test_a_config_that_is_not_valid_json_exits_2_naming_the_file(tmp_path, command, text):
    bad = tmp_path / "bad config.json"
    bad.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    extra = ["--budgets", "2e4", "--dry-run"] if command == "sweep" else ["--print-config"]
    r = run_cli(command, "--config", str(bad), *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], r.stderr[-2000:]
