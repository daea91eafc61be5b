"""The benchmark runs end to end and writes its JSON (speed itself is measured by `python -m fer_core bench`)."""

import json

from fer_core.bench import run_bench


def test_bench_writes_the_figures_it_promises(tmp_path):
    doc = run_bench(images=384, frames=2, out_dir=str(tmp_path), quiet=True)
    assert doc["train_speedup_vs_naive"] > 0 and doc["frame_latency_ms_median"] > 0 and doc["faces"] == 1
    assert set(doc["train_img_per_s_naive"]) == {"num_workers=0", "num_workers=2"}
    assert json.loads((tmp_path / "bench.json").read_text()) == doc
