"""``bench --live-modes``: live video computed in the browser against live video computed on the server, one run,
the same dashboard, the same fake camera, the same models.

For each mode, a headless Chromium tab opens Try it, picks the mode, starts the stream (Chromium's fake camera
playing a 640x480 video of one face at 30 fps) and, once frames flow, counts for ``seconds``: the frames the mode
processed (the browser's own counter, or the server's), so fps is processed frames per second of wall time, and
the server process's CPU time over the same window (``/proc``), as a share of one core. The page's own numbers
(detection ms, ms per face per model) come with it. Numbers, not pass/fail: the README quotes them.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from fer_core.serving.inference import demo_frame
from fer_core.store.files import atomic_write_json
from fer_core.store.runs import RESULTS_DIR
from fer_core.studies.browser_engine import CHROMIUM_ARGS
from fer_core.studies.serve_bench import LIVE_TOGGLE, SETTLED, _chromium, dashboard, process_stats, write_y4m

MODES = {"browser": "in your browser (no frame leaves", "server": "on this server (WebRTC"}
#: the page's counters: processed frames, and the mode's own timing line
COUNTERS = {
    "browser": r"in your browser: frames (\d+)",
    "server": r"frames processed: (\d+)",
}


def _frames(page, mode: str) -> int | None:
    m = re.search(COUNTERS[mode], page.evaluate("document.body.innerText"))
    return int(m.group(1)) if m else None


def _count_past(page, mode: str, n: int) -> int:
    """Waits until the page's frame counter shows more than ``n`` frames; returns what it shows then."""
    page.wait_for_function(
        "([re, n]) => { const m = document.body.innerText.match(new RegExp(re)); return !!m && +m[1] > n; }",
        arg=[COUNTERS[mode], n],
        timeout=300_000,
    )
    return _frames(page, mode)


def _measure(browser, url: str, pid: int, mode: str, seconds: float, say) -> dict:
    context = browser.new_context(viewport={"width": 1400, "height": 2000}, permissions=["camera"])
    page = context.new_page()
    try:
        page.goto(f"{url}/Try_it")
        page.wait_for_selector("[data-testid='stApp']")
        page.wait_for_function(SETTLED, timeout=120_000)
        page.get_by_role("tab", name="Live video").click()
        page.get_by_text(MODES[mode], exact=False).click()
        toggle = page.locator(LIVE_TOGGLE[mode])  # the server mode's is drawn by the radio's rerun
        toggle.wait_for(timeout=120_000)
        toggle.click()
        _count_past(page, mode, 9)
        # the window opens and closes on the counter's updates (the page redraws it about once a second, later on
        # a loaded machine), so the frames it counts are the frames of its wall time, and never none
        f0 = _count_past(page, mode, _frames(page, mode))
        c0, t0 = process_stats(pid)["cpu_s"], time.perf_counter()
        page.wait_for_timeout(seconds * 1000)  # a benchmark's measuring window, not a wait for an event
        f1 = _count_past(page, mode, _frames(page, mode))
        c1, t1 = process_stats(pid)["cpu_s"], time.perf_counter()
        text = page.evaluate("document.body.innerText")
    finally:
        context.close()
    wall = t1 - t0
    row = {
        "mode": mode,
        "seconds": round(wall, 1),
        "frames": f1 - f0,
        "fps": round((f1 - f0) / wall, 1),
        "server_cpu_pct_of_one_core": round(100 * (c1 - c0) / wall, 1) if c0 is not None else None,
    }
    if mode == "browser":
        per = re.search(r"per face: (.+)", text)
        row["per_face"] = per.group(1).strip() if per else None
        dev = re.search(r"measured on (.+)", text)
        row["device"] = dev.group(1).strip() if dev else None
        det = re.search(r"detect ([\d.]+) ms", text)
        row["detect_ms"] = float(det.group(1)) if det else None
    else:
        m = re.search(r"detect ([\d.]+) ms · classify ([\d.]+) ms", text)
        row["detect_ms"], row["classify_ms"] = (float(m.group(1)), float(m.group(2))) if m else (None, None)
    say(f"  {mode}: {row['fps']} fps, server {row['server_cpu_pct_of_one_core']}% of a core over {row['seconds']} s")
    return row


def live_modes_bench(seconds: float = 20, out_dir: str | None = None, quiet: bool = False) -> dict:
    """Both live modes against one fresh dashboard (the shipped models, the page's default selection); writes
    ``live_modes.json`` under results/bench/ (or ``out_dir``) and returns it."""
    from playwright.sync_api import sync_playwright

    say = (lambda *a: None) if quiet else print
    chromium = _chromium()
    with tempfile.TemporaryDirectory(prefix="fer-live-") as tmp_name:
        tmp = Path(tmp_name)
        video = tmp / "face.y4m"
        write_y4m(video, demo_frame(3, seed=3), frames=30, fps=30)
        say(f"live video in the browser and on the server, {seconds:g} s each, one dashboard, one fake camera")
        with dashboard(tmp) as (url, pid), sync_playwright() as p:
            args = CHROMIUM_ARGS + [
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={video}",
            ]
            browser = p.chromium.launch(executable_path=chromium, args=args)
            try:
                rows = [_measure(browser, url, pid, mode, seconds, say) for mode in MODES]
            finally:
                browser.close()
    by = {r["mode"]: r for r in rows}
    doc = {
        "modes": rows,
        "fps_ratio_browser_over_server": round(by["browser"]["fps"] / max(by["server"]["fps"], 1e-9), 2),
        "camera": "640x480 at 30 fps (Chromium's fake camera), one face",
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(out_dir) if out_dir else RESULTS_DIR / "bench"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "live_modes.json", doc)
    say(f"written: {out / 'live_modes.json'}")
    return doc
