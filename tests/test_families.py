"""More contenders: MobileNetV2- and ShuffleNetV2-style families, and any family added as one file."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import fer_core.models as registry
from conftest import run_cli, tiny_config
from fer_core.models import (
    budget_note,
    count_params,
    create_model,
    family_about,
    list_models,
    register_family,
    rounded_widths,
    solve_width,
)
from fer_core.models.stats import model_stats

NEW = ("mobilenetv2", "shufflenetv2")


def _conv(cin, cout, k=1, groups=1):  # a bias-free conv and its BatchNorm (weight + bias)
    return cin // groups * cout * k * k + 2 * cout


def _mobilenetv2(stem, stages, last):
    """Parameters by hand: stem, then (t, [out channels of each block], first stride) per stage, 1x1 to last, FC."""
    n, c = _conv(1, stem, 3), stem
    for t, outs in stages:
        for cout in outs:
            hidden = c * t
            n += (_conv(c, hidden) if t != 1 else 0) + _conv(hidden, hidden, 3, hidden) + _conv(hidden, cout)
            c = cout
    return n + _conv(c, last) + last * 7 + 7


def _shufflenetv2(stem, stages, last):
    n, c = _conv(1, stem, 3), stem
    for cout, units in stages:
        half = cout // 2
        n += _conv(c, c, 3, c) + _conv(c, half)  # down-sampling unit, branch 1
        n += _conv(c, half) + _conv(half, half, 3, half) + _conv(half, half)  # branch 2
        n += (units - 1) * (2 * _conv(half, half) + _conv(half, half, 3, half))  # basic units: half the channels
        c = cout
    return n + _conv(c, last) + last * 7 + 7


@pytest.mark.parametrize(
    "family, width, expected",
    [
        (
            "mobilenetv2",
            1.0,
            _mobilenetv2(16, [(1, [16]), (6, [24, 24]), (6, [40, 40]), (6, [80, 80]), (6, [128])], 320),
        ),
        ("mobilenetv2", 0.5, _mobilenetv2(8, [(1, [8]), (6, [12, 12]), (6, [20, 20]), (6, [40, 40]), (6, [64])], 160)),
        ("mobilenetv2", 0.25, _mobilenetv2(4, [(1, [4]), (6, [8, 8]), (6, [12, 12]), (6, [20, 20]), (6, [32])], 80)),
        ("shufflenetv2", 1.0, _shufflenetv2(24, [(116, 3), (232, 7), (464, 3)], 512)),
        ("shufflenetv2", 0.5, _shufflenetv2(12, [(60, 3), (116, 7), (232, 3)], 256)),
        ("shufflenetv2", 0.25, _shufflenetv2(8, [(28, 3), (60, 3 + 4), (116, 3)], 128)),
    ],
)
def test_parameter_counts_match_the_architecture_by_hand(family, width, expected):
    assert count_params(family, width) == expected


def test_the_new_families_have_the_counts_their_docstrings_say():
    import fer_core.models.mobilenetv2 as v2
    import fer_core.models.shufflenetv2 as sh

    assert f"{count_params('mobilenetv2', 1.0):,}" in v2.__doc__
    assert f"{count_params('shufflenetv2', 1.0):,}" in sh.__doc__


@pytest.mark.parametrize("family", NEW)
def test_the_solver_reaches_every_budget_from_2e4_to_3e6_within_5_percent(family):
    for budget in np.geomspace(2e4, 3e6, 15):
        w, p = solve_width(family, float(budget))
        assert abs(p / budget - 1) <= 0.05, (family, budget, w, p)
        assert count_params(family, w) == p


@pytest.mark.parametrize("family", ["mobilenet", "cnn", "mobilenetv2", "shufflenetv2"])
def test_a_budget_rounding_cannot_reach_is_named_with_the_nearest_network(family):
    """On a 10% grid of budgets (53 per family, 3e4 among them): within 5%, or a note naming the nearest network,
    and then truly no 3-significant-digit width near it comes within 5%."""
    budgets = [3e4] + [2e4 * 1.1**i for i in range(53)]
    for budget in budgets:
        w, p = solve_width(family, budget)
        note = budget_note(family, budget)
        if abs(p / budget - 1) <= 0.05:
            assert note is None
            continue
        assert note and f"width {w:g} with {p:,}" in note and f"{p / budget - 1:+.1%}" in note, note
        near = {count_params(family, x) for x in rounded_widths(w / 1.25, w * 1.25, points=600)}
        assert not any(abs(q / budget - 1) <= 0.05 for q in near), (family, budget, sorted(near))


def test_describe_names_an_unreachable_budget():
    out = run_cli("describe", "mobilenetv2", "--budget", "3e4", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["params"] == 28_431 and doc["budget_error"] == -0.0523
    assert "no network within 5% of 30,000 parameters" in doc["note"] and "note: mobilenetv2" in out.stderr


@pytest.mark.parametrize("family", NEW)
@pytest.mark.parametrize("width", [0.13, 0.5, 1.0, 1.9])
def test_forward_shapes_and_stats(family, width):
    m = create_model(family, width).eval()
    assert m(torch.zeros(3, 1, 48, 48)).shape == (3, 7)
    s = model_stats(m, latency=False)
    assert s["params"] == count_params(family, width) and s["macs"] > 0 and s["bytes_fp32"] > 4 * s["params"]


def test_mobilenetv2_adds_the_input_back_only_where_shapes_match():
    from fer_core.models.mobilenetv2 import InvertedResidual

    blocks = [b for b in create_model("mobilenetv2", 1.0).modules() if isinstance(b, InvertedResidual)]
    assert [b.residual for b in blocks] == [True, False, True, False, True, False, True, False]
    last = blocks[1].block[-1]  # the linear bottleneck: conv + BN, no activation after it
    assert isinstance(last[-1], nn.BatchNorm2d)


def test_shuffle_interleaves_the_two_halves():
    from fer_core.models.shufflenetv2 import shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert shuffle(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_cat_shuffle_equals_cat_then_shuffle_and_keeps_channels_last():
    from fer_core.models.shufflenetv2 import cat_shuffle, shuffle

    a, b = torch.randn(3, 6, 5, 4), torch.randn(3, 6, 5, 4)
    want = shuffle(torch.cat([a, b], 1))
    assert torch.equal(cat_shuffle(a, b), want)  # plain NCHW: the two-step form
    cl = torch.channels_last
    got = cat_shuffle(a.contiguous(memory_format=cl), b.contiguous(memory_format=cl))
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=cl)  # no NCHW copy for the next conv to reorder back


def test_relu6_without_a_copy_gives_nn_relu6s_values_and_gradients():
    from fer_core.models.layers import ReLU6

    x = torch.randn(4, 8, 6, 6) * 5
    x[0, 0, 0, :3] = torch.tensor([0.0, 6.0, -0.0])  # at the clip points the gradient is 0, as PyTorch's
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    g = torch.randn_like(x)
    (nn.ReLU6(inplace=True)(a * 1.0) * g).sum().backward()  # * 1.0: an in-place op needs a non-leaf input
    (ReLU6()(b * 1.0) * g).sum().backward()
    assert torch.equal(a.grad, b.grad)
    assert torch.equal(ReLU6()(x.clone()), nn.functional.relu6(x))


@pytest.mark.parametrize("family", NEW)
def test_training_step_keeps_nn_layers_gradients(family):
    """The faster layers (ReLU6 without a copy, channels_last shuffle) change no number of a training step."""
    from fer_core.models import layers
    from fer_core.models.layers import plain_layers

    def grads(model):
        torch.manual_seed(3)  # the same dropout draw
        x = torch.randn(8, 1, 48, 48).contiguous(memory_format=torch.channels_last)
        nn.functional.cross_entropy(model(x), torch.arange(8) % 7).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    torch.manual_seed(0)
    fast = create_model(family, 0.5).to(memory_format=torch.channels_last).train()
    plain = plain_layers(create_model(family, 0.5)).to(memory_format=torch.channels_last).train()
    plain.load_state_dict(fast.state_dict())
    assert not any(isinstance(m, layers.ReLU6) for m in plain.modules())
    assert all(getattr(m, "plain_shuffle", True) for m in plain.modules())
    want = grads(plain)
    assert torch.equal(grads(fast), want)


@pytest.mark.parametrize("family", NEW)
def test_onnx_export_matches_torch(family):
    pytest.importorskip("onnxruntime")
    from fer_core.serving.onnx import ort_session, to_onnx

    m = create_model(family, 0.5).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is tested too
        for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(16, 1, 48, 48)
    with torch.no_grad():
        want = torch.softmax(m(x), 1).numpy()
    got = torch.softmax(ort_session(to_onnx(m))(x), 1).numpy()
    assert np.abs(got - want).max() < 1e-4


class Tiny(nn.Module):
    """A family written inside a test: one conv, pool, linear."""

    def __init__(self, width: float = 1.0, num_classes: int = 7, dropout: float = 0.0):
        super().__init__()
        c = max(1, round(16 * width))
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(16 * c, num_classes),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def tiny_family():
    register_family("tinytest", Tiny, "a one-conv family registered by a test")
    yield "tinytest"
    registry._REGISTRY.pop("tinytest", None)
    registry.count_params.cache_clear()


def test_a_family_registered_in_one_line_is_listed_solved_trained_and_compared(tiny_family, tmp_path):
    from fer_core.analysis.compare import runs_frame
    from fer_core.analysis.figures import family_color, scatter
    from fer_core.training.trainer import fit

    assert tiny_family in list_models() and family_about(tiny_family).startswith("a one-conv")
    w, p = solve_width(tiny_family, 3000)
    assert abs(p / 3000 - 1) <= 0.05
    cfg = tiny_config(epochs=1)
    cfg.model.family, cfg.model.width = tiny_family, w
    s = fit(cfg)
    assert s["status"] == "completed" and s["family"] == tiny_family and s["params"] == p
    df = runs_frame()
    assert tiny_family in set(df["family"])
    fig = scatter(df[df["status"] == "completed"], "params", "public_acc")
    assert any(family_color(tiny_family) == t.marker.color for t in fig.data if t.mode == "markers")
    assert len({family_color(f) for f in list_models()}) == len(list_models())  # every family its own colour


def test_family_names_that_would_break_run_ids_are_refused():
    from fer_core.common import FerError

    for bad in ("my-net", "Net", "9net", ""):
        with pytest.raises(FerError, match="family name"):
            register_family(bad, Tiny, "x")
    assert math.isfinite(count_params("cnn", 1.0))


def test_the_train_page_offers_every_registered_family(tiny_family, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    monkeypatch.setenv("FER_DATA", "synthetic")
    at = AppTest.from_file(str(ROOT / "pages" / "1_Train.py"), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    fams = next(m for m in at.multiselect if m.label == "Families")
    assert set(fams.options) >= {f"{f}: {family_about(f)}" for f in list_models()}
    assert tiny_family in list_models() and len(fams.options) == len(list_models())
    assert set(fams.value) == {"mobilenet", "cnn"}  # the seed's comparison stays the default


def test_the_readme_example_family_registers_builds_and_solves():
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n# fer_core/models/tinynet.py\n(.*?)```", text, re.S).group(1)
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "fer_core.models.tinynet"})
        assert "tinynet" in list_models()
        w, p = solve_width("tinynet", 5e3)
        assert abs(p / 5e3 - 1) <= 0.05 and create_model("tinynet", w).eval()(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    finally:
        registry._REGISTRY.pop("tinynet", None)
        registry.count_params.cache_clear()


def test_the_quick_comparison_table_is_what_its_runs_say():
    """results/quick/README.md's table, cell by cell, from the shipped summaries (nothing typed by hand)."""
    import json
    import re

    from conftest import ROOT

    quick = ROOT / "results" / "quick"
    summaries = [json.loads(p.read_text()) for p in quick.glob("*/summary.json")]
    assert len(summaries) == 12 and {s["family"] for s in summaries} == {"mobilenet", "cnn", *NEW}
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", (quick / "README.md").read_text(), re.M)
    assert len(rows) == 4
    for family, cells in rows:
        runs = sorted((s for s in summaries if s["family"] == family), key=lambda s: s["params"])
        expected = [f"{s['private_acc']:.3f} ({s['params'] / 1000:.0f}k)" for s in runs]
        assert [c.strip() for c in cells.split("|")] == expected, family
