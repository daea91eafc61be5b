"""The comparisons: Pareto frontier, the matched-budget gap, and the figures built from them."""

import json

import pandas as pd
import pytest

from conftest import run_cli
from fer_core.analysis.compare import matched_budget_gap, pareto_frontier, runs_frame
from fer_core.analysis.figures import scatter
from fer_core.store.runs import Run


def _df(rows):
    base = {"status": "completed", "data": "fer2013", "recipe": "seed", "epochs_done": 10, "epochs": 10}
    return pd.DataFrame([{**base, **r} for r in rows])


RUNS = [
    {"run_id": "c1", "family": "cnn", "width": 0.1, "params": 10_000, "seed": 0, "private_acc": 0.40},
    {"run_id": "c2", "family": "cnn", "width": 1.0, "params": 1_000_000, "seed": 0, "private_acc": 0.60},
    {"run_id": "c3", "family": "cnn", "width": 0.1, "params": 10_000, "seed": 1, "private_acc": 0.42},
    {"run_id": "c4", "family": "cnn", "width": 1.0, "params": 1_000_000, "seed": 1, "private_acc": 0.62},
    {"run_id": "m1", "family": "mobilenet", "width": 1.0, "params": 100_000, "seed": 0, "private_acc": 0.55},
    {"run_id": "m2", "family": "mobilenet", "width": 1.0, "params": 100_000, "seed": 1, "private_acc": 0.59},
    {"run_id": "m3", "family": "mobilenet", "width": 9.0, "params": 9_000_000, "seed": 0, "private_acc": 0.70},
]


def test_gap_interpolates_on_log_params_per_seed_and_never_extrapolates():
    gap = matched_budget_gap(_df(RUNS))
    assert len(gap) == 1  # 9M parameters lie beyond every CNN: no number is made up for it
    row = gap.iloc[0]
    # seed 0: CNN at 1e5 = halfway (in log) between 0.40 and 0.60 = 0.50 -> gap 0.05; seed 1: 0.52 -> 0.07
    assert row["params"] == 100_000 and row["seeds"] == 2
    assert row["gap_mean"] == pytest.approx(0.06) and row["gap_sd"] == pytest.approx(0.0141421, rel=1e-4)
    assert row["cnn_acc_interp"] == pytest.approx(0.51)


def test_gap_ignores_unfinished_runs_and_needs_both_families():
    rows = [dict(r, status="running") if r["family"] == "cnn" else r for r in RUNS]
    assert matched_budget_gap(_df(rows)).empty


def test_pareto_frontier_keeps_only_unbeaten_runs():
    df = _df(
        [
            {"run_id": "a", "family": "cnn", "width": 1, "params": 10, "seed": 0, "private_acc": 0.5},
            {"run_id": "b", "family": "cnn", "width": 1, "params": 20, "seed": 0, "private_acc": 0.4},
            {"run_id": "c", "family": "cnn", "width": 1, "params": 30, "seed": 0, "private_acc": 0.7},
        ]
    )
    assert pareto_frontier(df, "params", "private_acc")["run_id"].tolist() == ["a", "c"]


def test_scatter_marks_running_runs_and_draws_byte_limits():
    df = _df(RUNS)
    df.loc[0, "status"] = "running"
    df["bytes_fp16"] = df["params"] * 2
    fig = scatter(df, "bytes_fp16", "private_acc")
    runs = [t for t in fig.data if t.mode == "markers" and t.x[0] is not None]
    running = [t for t in runs if t.name.endswith("running")]
    assert len(running) == 1 and running[0].opacity < 1 and running[0].marker.symbol == "circle"
    assert any(t.mode == "lines" and t.name.endswith("frontier") for t in fig.data)
    assert {round(s.x0) for s in fig.layout.shapes} == {225_000, 650_000}


def test_the_scatter_encodes_family_as_colour_lineage_as_marker_and_format_as_fill_with_a_short_legend():
    rows = []
    for i, (family, kind, fmt) in enumerate(
        [(f, k, m) for f in ("mobilenet", "cnn") for k in ("plain", "distilled") for m in ("torch", "onnx-int8")]
        + [("mobilenetv2", "fine-tuned", "onnx-fp16"), ("shufflenetv2", "plain", "onnx-fp32")]
    ):
        rows.append({"run_id": f"r{i}", "family": family, "width": 1, "params": 1000 * (i + 1), "seed": 0,
                     "private_acc": 0.5, "format": fmt, "lineage_kind": kind})  # fmt: skip
    fig = scatter(_df(rows), "params", "private_acc")
    runs = [t for t in fig.data if t.mode == "markers" and t.x[0] is not None]
    by = {t.customdata[0]: t for t in runs}
    assert by["r0"].marker.symbol == "circle" and by["r1"].marker.symbol == "circle-dot"  # torch, int8
    assert by["r2"].marker.symbol == "star" and by["r3"].marker.symbol == "star-dot"  # distilled
    assert by["r8"].marker.symbol == "triangle-up-open-dot" and by["r9"].marker.symbol == "circle-open"
    assert len({by[r].marker.color for r in ("r0", "r2", "r3")}) == 1 and by["r0"].marker.color != by["r4"].marker.color
    assert not any(t.showlegend for t in runs)  # the runs themselves stay out of the legend
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["cnn", "mobilenet", "mobilenetv2", "shufflenetv2", "trained", "distilled", "fine-tuned",
                      "torch weights", "ONNX fp32", "ONNX fp16", "ONNX int8"]  # fmt: skip


def test_running_runs_show_their_best_public_accuracy_so_far(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    run = Run.create("cnn", 0.5, 0)
    run.mark_running(family="cnn", width=0.5, params=1000, best_public_acc=0.33, data="synthetic")
    df = runs_frame()
    assert df.loc[0, "public_acc"] == 0.33 and df.loc[0, "status"] == "running"


def test_compare_cli_prints_the_same_gap(tmp_path):
    for r in RUNS:
        run = Run.create(r["family"], r["width"], r["seed"], root=tmp_path)
        run.update_summary(**{k: v for k, v in r.items() if k != "run_id"}, status="completed", data="fer2013")
    out = run_cli("compare", "--data", "fer2013", "--json", env={"FER_RUNS": str(tmp_path)})
    doc = json.loads(out.stdout)
    assert doc["runs"] == 7 and doc["matched_budget_gap"][0]["gap_mean"] == pytest.approx(0.06)
    assert [r["params"] for r in doc["pareto_frontier"]["cnn/fer2013"]] == [10_000, 1_000_000]


def test_gap_compares_plain_runs_of_one_recipe_only():
    distilled = [
        dict(r, run_id=r["run_id"] + "d", teacher="c2", private_acc=0.99) for r in RUNS if r["family"] == "mobilenet"
    ]
    better = [
        dict(r, run_id=r["run_id"] + "b", recipe="better", private_acc=0.01) for r in RUNS if r["family"] == "cnn"
    ]
    gap = matched_budget_gap(_df(RUNS + distilled + better))
    assert gap[["data", "recipe"]].values.tolist() == [["fer2013", "seed"]]  # better has no MobileNet to match
    assert gap.iloc[0]["gap_mean"] == pytest.approx(0.06)  # the distilled MobileNets changed nothing


def test_gap_is_computed_per_data_source():
    synthetic = [dict(r, data="synthetic", private_acc=0.9) for r in RUNS if r["family"] == "mobilenet"]
    gap = matched_budget_gap(_df(RUNS + synthetic))
    assert gap["data"].tolist() == ["fer2013"]  # synthetic MobileNets have no synthetic CNN to compare with


def test_report_figures_are_written_as_png(tmp_path):
    import shutil

    pytest.importorskip("kaleido")
    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        pytest.skip("PNG export needs Chromium or Chrome")
    from fer_core.analysis.figures import report_figures

    df = _df(RUNS)
    df["bytes_fp16"] = df["params"] * 2
    paths = report_figures(df, tmp_path, data="fer2013")
    assert [p.name for p in paths] == ["accuracy_vs_params.png", "accuracy_vs_bytes.png", "families_at_budgets.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in paths)


def test_gap_leaves_onnx_variants_out():
    # an int8 variant of m1 at the same parameters with a much lower accuracy would pull the gap down
    variant = {**RUNS[4], "run_id": "m1-onnx-int8", "format": "onnx-int8", "derived_from": "m1", "private_acc": 0.1}
    plain = matched_budget_gap(_df([{**r, "format": "torch"} for r in RUNS]))
    with_variant = matched_budget_gap(_df([{**r, "format": "torch"} for r in RUNS] + [variant]))
    assert with_variant["gap_mean"].tolist() == pytest.approx(plain["gap_mean"].tolist())
    assert with_variant["seeds"].tolist() == plain["seeds"].tolist() == [2]


def _plain_run(family, params, seed, acc, recipe="seed") -> dict:
    """A completed FER2013 run trained from labels, as the runs table lists it."""
    return {"run_id": f"{family}-{params}-{seed}-{recipe}", "family": family, "width": params / 1e5, "params": params,
            "seed": seed, "private_acc": acc, "status": "completed", "data": "fer2013", "recipe": recipe,
            "format": "torch", "teacher": None, "init_run": None}  # fmt: skip


def test_the_family_table_ranks_families_at_each_budget_with_mean_and_sd_over_seeds():
    import pandas as pd

    from fer_core.analysis.compare import pairwise_gaps
    from fer_core.analysis.families import family_table

    run = _plain_run

    df = pd.DataFrame(
        [run("a", 100_000, s, acc) for s, acc in enumerate([0.60, 0.62, 0.64])]
        + [run("b", 104_000, s, acc) for s, acc in enumerate([0.66, 0.66])]
        + [run("a", 20_000, 0, 0.50), run("b", 30_000, 0, 0.70)]  # b's 30k is outside 2e4's 15% band
        + [run("a", 100_000, 9, 0.99, recipe="better")]  # another recipe: its own table
    )
    t = family_table(df)
    at = t[(t["budget"] == 1e5) & (t["recipe"] == "seed")].set_index("family")
    assert at.loc["b", "rank"] == 1 and at.loc["a", "rank"] == 2
    assert abs(at.loc["a", "mean"] - 0.62) < 1e-9 and abs(at.loc["a", "sd"] - 0.02) < 1e-9 and at.loc["a", "runs"] == 3
    assert abs(at.loc["b", "margin"] - 0.04) < 1e-9 and pd.isna(at.loc["a", "margin"])
    small = t[(t["budget"] == 2e4) & (t["recipe"] == "seed")]
    assert list(small["family"]) == ["a"] and pd.isna(small["margin"].iloc[0])  # alone: no margin to claim
    assert t[t["recipe"] == "better"]["mean"].tolist() == [0.99]
    gaps = pairwise_gaps(df[df["recipe"] == "seed"])
    assert set(zip(gaps["a"], gaps["b"])) == {("a", "b")}


def test_the_family_figure_draws_each_family_with_error_bars_over_seeds():
    import pandas as pd

    from fer_core.analysis.figures import family_figure

    table = pd.DataFrame(
        [
            {"family": "mobilenet", "budget": 1e5, "params": 107_247, "mean": 0.62, "sd": 0.004, "runs": 3},
            {"family": "mobilenet", "budget": 2e4, "params": 20_067, "mean": 0.57, "sd": None, "runs": 1},
            {"family": "cnn", "budget": 1e5, "params": 104_171, "mean": 0.61, "sd": 0.011, "runs": 3},
        ]
    )
    fig = family_figure(table)
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"mobilenet", "cnn"}
    assert list(traces["mobilenet"].x) == [20_067, 107_247]  # along the size axis
    assert list(traces["mobilenet"].error_y.array) == [0.0, 0.004]  # one seed: no bar
    assert fig.layout.xaxis.type == "log"


def test_the_smallest_file_per_family_that_keeps_each_accuracy_level():
    from fer_core.analysis.compare import smallest_files

    def row(run_id, family, params, nbytes, fmt, acc, **more):
        return {"run_id": run_id, "family": family, "params": params, "bytes": nbytes, "format": fmt,
                "private_acc": acc, **more}  # fmt: skip

    rows = [
        row("m", "mobilenet", 100_000, 200_000, "torch", 0.62),
        row("m-i8", "mobilenet", 100_000, 160_000, "onnx-int8", 0.612, derived_from="m"),
        row("m-qat", "mobilenet", 100_000, 140_000, "onnx-int8-qat", 0.619, derived_from="m"),
        row("s", "mobilenet", 50_000, 100_000, "torch", 0.58),
        row("r", "mobilenet", 10_000, 20_000, "torch", 0.9, status="running"),
        row("c", "cnn", 1_000_000, 2_000_000, "torch", 0.61),
    ]
    t = smallest_files(_df(rows), [0.57, 0.615, 0.65])
    got = {(r.family, r.keeps): (r.run_id, r.bytes) for r in t.itertuples()}
    # the running run is never counted; a smaller file that keeps the level wins over a more accurate one
    assert got == {
        ("mobilenet", 0.57): ("s", 100_000),
        ("mobilenet", 0.615): ("m-qat", 140_000),
        ("cnn", 0.57): ("c", 2_000_000),
    }
    assert smallest_files(_df(rows), 0.615)["run_id"].tolist() == ["m-qat"]


def test_compare_cli_names_a_bad_keeps_level(tmp_path):
    r = run_cli("compare", "--keeps", "0.6,62", env={"FER_RUNS": str(tmp_path)})
    assert r.returncode == 2 and "--keeps '0.6,62': every level must lie between 0 and 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_gap_meets_the_other_familys_nearest_run_only_within_the_edge():
    import pandas as pd

    from fer_core.analysis.compare import EDGE, pairwise_gaps

    def run(family, params, acc):
        return _plain_run(family, params, 0, acc)

    # a's 19,311 lies 0.8% below b's smallest run, a's 25,000 inside b's range, a's 150,000 36% beyond it
    df = pd.DataFrame(
        [run("a", 19_311, 0.59), run("a", 25_000, 0.60), run("a", 150_000, 0.70)]
        + [run("b", 19_457, 0.61), run("b", 110_000, 0.66)]
    )
    g = pairwise_gaps(df).set_index("params")
    assert 150_000 > 110_000 * (1 + EDGE)
    assert list(g.index) == [19_311, 25_000]  # never extrapolated far
    assert g.loc[19_311, "b_at"] == "nearest" and abs(g.loc[19_311, "gap_mean"] - (0.59 - 0.61)) < 1e-9
    assert g.loc[25_000, "b_at"] == "interpolated" and 0.61 < g.loc[25_000, "b_acc_interp"] < 0.66


def test_where_both_families_have_seeds_at_a_size_the_gap_s_standard_error_holds_both_spreads(monkeypatch):
    import math

    import pandas as pd

    from fer_core.analysis.compare import pairwise_gaps

    run = _plain_run

    a = [0.657, 0.673, 0.664]
    b = [0.657, 0.662, 0.640]
    df = pd.DataFrame(
        [run("a", 109_000, s, x) for s, x in enumerate(a)]
        + [run("b", 108_000, s, x) for s, x in enumerate(b)]
        + [run("a", 50_000, 5, 0.64), run("b", 50_000, 5, 0.63)]  # seeds 0-2 meet b's mean at 1e5
    )
    g = pairwise_gaps(df).set_index("params")
    at = g.loc[109_000]
    se = math.sqrt(pd.Series(a).var() / 3 + pd.Series(b).var() / 3)
    assert at["b_seeds"] == 3 and at["gap_se"] == pytest.approx(se)
    assert at["gap_mean"] == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert at["gap_se"] > at["gap_sd"] / math.sqrt(3)  # b's spread is in it, not only a's
    assert pd.isna(g.loc[50_000, "gap_se"])  # one seed each: no error to give
    alone = pairwise_gaps(df[df["params"] != 50_000])  # b at one size only: met there, within the edge
    assert len(alone) == 1 and alone.iloc[0]["b_at"] == "nearest" and alone.iloc[0]["gap_se"] == pytest.approx(se)

    text = _compare_text(df, monkeypatch)
    assert "a - b" in text and f"se {se:.4f} with 3 of B's" in text


def _compare_text(df, monkeypatch) -> str:
    """What ``python -m fer_core compare`` prints for these runs."""
    import contextlib
    import io

    from fer_core.cli import build_parser
    from fer_core.cli import runs as cli_runs

    monkeypatch.setattr(cli_runs, "runs_frame", lambda: df)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_runs.cmd_compare(build_parser().parse_args(["compare"])) == 0
    return buf.getvalue()


def test_the_answer_names_each_budgets_winner_its_runs_and_its_lead():
    import pandas as pd

    from fer_core.analysis.families import family_answer

    rows = [
        ("fer2013", "seed", 1e5, "b", 104_000, 0.66, None, 1),
        ("fer2013", "seed", 1e5, "a", 100_000, 0.62, 0.02, 3),
        ("fer2013", "seed", 2e4, "a", 20_000, 0.50, None, 1),
        ("fer2013", "better", 1e5, "a", 100_000, 0.99, None, 1),  # another recipe: not in the seed's answer
        ("synthetic", "seed", 1e5, "c", 100_000, 0.90, None, 1),  # another data source: neither
    ]
    cols = ["data", "recipe", "budget", "family", "params", "mean", "sd", "runs"]
    table = pd.DataFrame(rows, columns=cols)
    assert family_answer(table) == ["~2×10⁴: a 0.5000 (1 run)", "~10⁵: b 0.6600 (1 run), ahead of a by 0.0400"]
    assert family_answer(table, recipe="better") == ["~10⁵: a 0.9900 (1 run)"]
    assert family_answer(table[table["family"] == "a"])[1] == "~10⁵: a 0.6200 ± 0.0200 (3 runs)"
