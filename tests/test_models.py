import math

import pytest
import torch

from fer_core.common import FerError
from fer_core.models import count_params, create_model, list_models, solve_width, widest_within
from fer_core.models.layers import make_divisible
from fer_core.models.stats import count_macs, count_state_values, count_trainable, model_stats, saved_bytes


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("width", [0.1, 0.5, 1.0, 2.0])
def test_every_model_maps_a_batch_of_faces_to_seven_logits(name, width):
    model = create_model(name, width).eval()
    out = model(torch.randn(3, 1, 48, 48))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_registry_lists_both_families():
    assert set(list_models()) >= {"mobilenet", "cnn"}


def test_unknown_model_and_bad_width_are_clear_errors():
    with pytest.raises(FerError, match="unknown model 'resnet'"):
        create_model("resnet")
    with pytest.raises(FerError, match="width must be a positive number"):
        create_model("cnn", width=0)


def test_mobilenet_width_one_is_exactly_the_seed_network():
    m = create_model("mobilenet", 1.0)
    assert count_trainable(m) == 107_247
    assert count_state_values(m) == 109_761  # the report's figure counts BatchNorm buffers too
    convs = [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (1, 1)]
    assert convs == [128, 128, 128, 256]
    depthwise = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1]
    assert all(c.stride == (2, 2) and c.groups == c.in_channels for c in depthwise) and len(depthwise) == 4
    slopes = {a.negative_slope for a in m.modules() if isinstance(a, torch.nn.LeakyReLU)}
    assert slopes == {0.05}
    linears = [(lin.in_features, lin.out_features) for lin in m.modules() if isinstance(lin, torch.nn.Linear)]
    assert linears == [(256, 100), (100, 7)]


def test_mobilenet_macs_match_a_hand_count():
    # stem 48*48*64*9, then per block depthwise (H*W*C*9) + pointwise (H*W*Cin*Cout), then the head
    hand = 48 * 48 * 64 * 9
    for size, cin, cout in [(24, 64, 128), (12, 128, 128), (6, 128, 128), (3, 128, 256)]:
        hand += size * size * cin * 9 + size * size * cin * cout
    hand += 256 * 100 + 100 * 7
    assert count_macs(create_model("mobilenet", 1.0)) == hand == 9_865_532


def test_cnn_width_one_is_within_one_percent_of_the_report():
    params = count_trainable(create_model("cnn", 1.0))
    assert abs(params / 5_758_791 - 1) < 0.01


@pytest.mark.parametrize("name", ["mobilenet", "cnn"])
@pytest.mark.parametrize("budget", [2e4, 5e4, 1e5, 3e5, 1e6, 3e6, 6e6])
def test_budget_solver_lands_within_ten_percent(name, budget):
    width, params = solve_width(name, budget)
    assert abs(params / budget - 1) < 0.10
    assert count_trainable(create_model(name, width)) == params  # the width rebuilds that exact network


@pytest.mark.parametrize("name", ["mobilenet", "cnn", "mobilenetv2", "shufflenetv2"])
def test_the_widest_network_within_a_hard_limit_fits_and_the_next_width_up_does_not(name):
    for limit in (20_000, 60_000):  # the goals' budget and the smallest studied (110k: test_beyond's student)
        w = widest_within(name, limit)
        assert count_params(name, w) <= limit, (name, limit, w)
        up = float(f"{w + 10 ** (math.floor(math.log10(w)) - 2):.3g}")  # the next 3-significant-digit width
        assert count_params(name, up) > limit, (name, limit, up)


def _walked(name: str, budget: float) -> tuple[float, int]:
    """The solver as it was first written: every width of the 1% grid from the narrowest, then the 3-digit widths
    next to the best; studies are keyed by the widths it chose, so the faster solver must choose the same."""
    from fer_core.models import WIDTH_RANGE, rounded_widths

    lo, hi = WIDTH_RANGE
    best = None

    def offer(w):
        nonlocal best
        p = count_params(name, w)
        if best is None or abs(math.log(p / budget)) < best[0] - 1e-12:
            best = (abs(math.log(p / budget)), w, p)

    for i in range(int(math.log(hi / lo) / math.log(1.01)) + 1):
        w = float(f"{lo * 1.01**i:.3g}")
        offer(w)
        if count_params(name, w) > budget * 1.5:
            break
    for w in rounded_widths(best[1] / 1.012, best[1] * 1.012):
        offer(w)
    return best[1], best[2]


@pytest.mark.parametrize("name", list_models())
def test_the_solver_picks_what_walking_every_width_picks(name):
    budgets = [2e4 * (3e6 / 2e4) ** (i / 15) for i in range(16)] + [1e3, 19_000, 60_000, 110_000, 300_000]
    for budget in budgets:  # 16 budgets spread from 2e4 to 3e6, the study's, and 1e3: below three families' narrowest
        assert solve_width(name, budget) == _walked(name, budget), (name, budget)


def test_budget_solver_refuses_nonsense():
    with pytest.raises(FerError):
        solve_width("cnn", -5)
    with pytest.raises(FerError):
        solve_width("cnn", math.inf)


def test_params_grow_with_width():
    for name in list_models():
        counts = [count_params(name, w) for w in (0.25, 0.5, 1.0, 2.0)]
        assert counts == sorted(counts) and len(set(counts)) == 4


def test_make_divisible_rounds_to_four_without_losing_ten_percent():
    assert make_divisible(64) == 64 and make_divisible(100) == 100
    assert make_divisible(26.6) == 28
    assert make_divisible(1) == 4
    for v in [5, 9.9, 33, 77.7, 250]:
        d = make_divisible(v)
        assert d % 4 == 0 and d >= 0.9 * v


def test_stats_are_consistent():
    m = create_model("mobilenet", 0.5)
    s = model_stats(m)
    assert s["params"] == count_trainable(m)
    assert s["state_values"] > s["params"]
    # fp16 halves the tensor bytes; the file also carries names and structure
    assert s["bytes_fp16"] < s["bytes_fp32"] < 4 * s["state_values"] + 20_000
    assert s["bytes_fp32"] == saved_bytes(m)
    assert s["latency_ms_cpu"] > 0 and s["macs"] > 0
