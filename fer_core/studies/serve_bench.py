"""Serving for hours and for many: ``bench --soak`` (the live processor alone over many frames) and ``bench
--serve`` (the dashboard as a shared server meets it, driven by a real browser).

``--serve`` starts ``streamlit run streamlit_app.py`` on a free local port (the shipped models; synthetic data)
and drives Chromium through Playwright (both optional: the bench says what is missing). It measures the
server process:

- **live video on and off**: ``cycles`` times, a tab opens Try it, starts the live stream (Chromium's fake
  camera showing a drawn face), waits until the server has processed frames, then stops it, or, every fourth
  time, closes the tab mid-stream. The server's threads and resident memory before (after a warm-up) and after
  (once it has settled) are compared: goal, back within 10%;
- **load**: for each count in ``sessions``, that many browser sessions at once each upload a photo on Try it
  (until every model's label is drawn) and open Compare (until the scatter is drawn); median and worst times,
  and the server's memory per session (models are cached once per process, so a session should cost little);
  a lost upload is sent again and a visit whose labels never come is made again, once each, and both are counted.

Linux only for the server's memory and threads (``/proc``). Numbers, not pass/fail: the README quotes them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fer_core.common import FerError
from fer_core.common.paths import PROJECT_DIR
from fer_core.serving.inference import demo_frame
from fer_core.serving.live import LiveProcessor
from fer_core.store.files import atomic_write_json
from fer_core.store.runs import RESULTS_DIR
from fer_core.studies.bench import width_one_models


def process_stats(pid: int | str = "self") -> dict:
    """Resident memory (MB), OS threads and CPU seconds used so far of a process, from ``/proc`` (Linux;
    None elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]  # utime, stime
        return {
            "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "threads": int(fields["Threads"]),
            "cpu_s": round(sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK"), 2),
        }
    except (OSError, KeyError, ValueError, IndexError):
        return {"rss_mb": None, "threads": None, "cpu_s": None}


def _soak_frames(n: int = 24) -> list[np.ndarray]:
    """A varied clip to cycle through: two people's faces moving across the frame, and empty frames (a face
    lost and found again exercises the tracker's bookkeeping, where leaks would hide)."""
    blank = np.full((480, 640), 118, np.uint8)
    faces = (demo_frame(seed=3), demo_frame(seed=5))
    frames = [np.roll(faces[i // 12 % 2], (i % 8) * 12 - 48, axis=1) if i % 6 else blank for i in range(n)]
    return [np.ascontiguousarray(np.stack([f] * 3, -1)) for f in frames]


def live_soak(frames: int = 20_000, runtime: str = "onnxruntime", checkpoints: int = 10, say=print) -> dict:
    """The live processor over ``frames`` frames, as the page's callback runs it (PyAV conversions when
    installed): resident memory and thread count after a warm-up and at ``checkpoints`` points after it.

    Goal: memory growth under 20 MB and no thread growth from the warm-up to the end."""
    try:
        import av
    except ImportError:
        av = None
    proc = LiveProcessor(width_one_models(runtime))
    clip = _soak_frames()

    def one(rgb):
        if av is None:
            return proc.process(rgb)
        src = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        return av.VideoFrame.from_ndarray(proc.process(src.to_ndarray(format="rgb24")), format="rgb24")

    for rgb in clip * 8:  # warm-up: allocations, caches, ONNX Runtime's arenas
        one(rgb)
    start = process_stats()
    points, t0 = [], time.perf_counter()
    every = max(1, frames // checkpoints)
    for i in range(1, frames + 1):
        one(clip[i % len(clip)])
        if i % every == 0 or i == frames:
            points.append({"frame": i, **process_stats(), "s": round(time.perf_counter() - t0, 1)})
            say(f"  soak {i:>6,}/{frames:,} frames: {points[-1]['rss_mb']} MB, {points[-1]['threads']} threads")
    end = points[-1]
    snap = proc.snapshot()
    growth = round(end["rss_mb"] - start["rss_mb"], 1) if start["rss_mb"] is not None else None
    return {
        "soak_frames": frames,
        "soak_fps": round(frames / (time.perf_counter() - t0), 1),
        "soak_faces_per_frame": round(snap["faces"] / max(snap["frames"], 1), 2),
        "soak_error": snap.get("error"),
        "soak_start": start,
        "soak_end": {k: end[k] for k in ("rss_mb", "threads")},
        "soak_rss_growth_mb": growth,
        "soak_thread_growth": (end["threads"] - start["threads"]) if start["threads"] is not None else None,
        "soak_points": points,
        "soak_goal_met": growth is not None and growth < 20 and end["threads"] <= start["threads"],
        "soak": f"640x480 clip of {len(clip)} frames (two people's faces moving, empty frames), both width-1.0 "
        f"models, {runtime}" + (", PyAV conversions" if av else ""),
    }


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
#: Page text once the live stream has gone through the server: "frames processed: N ... faces: M".
LIVE_COUNTED = r"""(n) => {
    const m = document.body.innerText.match(/frames processed: (\d+)\D+faces: (\d+)/);
    return !!m && +m[1] >= n;
}"""
SETTLED = "!document.querySelector('[data-testid=\"stStatusWidget\"]')"
#: Each live mode's "Live video" toggle, by its widget key: both modes label it so, and while the mode radio's
#: rerun runs, the page still shows the other mode's (stale) toggle beside the new one.
LIVE_TOGGLE = {
    "browser": ".st-key-browser_on [data-testid='stCheckbox']",
    "server": ".st-key-server_on [data-testid='stCheckbox']",
}


def _chromium() -> str:
    path = os.environ.get("FER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise FerError("bench --serve needs Chromium (e.g. apt install chromium) or FER_CHROMIUM=/path/to/it")
    return path


def write_y4m(path: Path, frame: np.ndarray, frames: int = 10, fps: int = 10) -> None:
    """A YUV4MPEG2 clip of one gray frame at ``fps``: Chromium plays it (looped) as its fake webcam."""
    h, w = frame.shape
    chroma = np.full((h // 2) * (w // 2), 128, np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + frame.tobytes() + chroma + chroma)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard(tmp: Path, env: dict | None = None):
    """A fresh dashboard server on a free port: yields (url, pid) once it answers; stopped on exit."""
    port = free_port()
    env = {**os.environ, "FER_RUNS": str(tmp / "runs"), "FER_DATA": "synthetic", "OMP_NUM_THREADS": "1", **(env or {})}
    env["PYTHONPATH"] = str(PROJECT_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(tmp / "server.log", "wb")
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise FerError(f"the dashboard did not start (see {tmp / 'server.log'})") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


async def _settle(page, timeout=120_000) -> None:
    await page.wait_for_selector("[data-testid='stApp']", timeout=timeout)
    await page.wait_for_function(SETTLED, timeout=timeout)


async def _page_text(page, chars: int = 800) -> str:
    try:
        text = await page.evaluate("document.body.innerText")
    except Exception as e:  # noqa: BLE001 - a closed or crashed page: say so instead
        return f"<no page text: {type(e).__name__}>"
    return " ".join(text.split())[-chars:]


def _log_tail(log: Path | None, chars: int = 1500) -> str:
    return log.read_text(errors="replace")[-chars:] if log and log.is_file() else "<no server log>"


async def _labels(page, url: str, photo: Path) -> int:
    """Try it with ``photo`` uploaded, until every model's label is drawn; returns how many uploads it took (the
    uploader lists the file once the browser has sent it: a lost upload is sent again once)."""
    await page.goto(f"{url}/Try_it")
    await _settle(page)
    await page.get_by_role("tab", name="Upload a photo").click()
    uploads = 0
    while True:
        await page.locator("input[type=file]").set_input_files(str(photo))
        uploads += 1
        try:
            await page.get_by_text(photo.name).first.wait_for(timeout=60_000)
            break
        except Exception:
            if uploads == 2:
                raise
    await page.get_by_text("Face 1").first.wait_for(timeout=150_000)
    await page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2", timeout=150_000)
    return uploads


async def _session(browser, url: str, photo: Path, log: Path | None = None) -> dict:
    """One visitor: upload a photo on Try it until every label is drawn, then Compare until its scatter is.
    A visit whose labels never come is made once more, from a fresh page, and counted (``retries``); a step that
    still does not come says which, with what the page showed and the server log's end."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await context.new_page()
    step, retries = "the photo's labels on Try it", 0
    try:
        t0 = time.perf_counter()
        while True:
            try:
                uploads = await _labels(page, url, photo)
                break
            except Exception:
                if retries:
                    raise
                retries += 1
                t0 = time.perf_counter()  # the time of the visit that worked; the retry itself is counted
        t1 = time.perf_counter()
        step = "the Compare scatter"
        await page.goto(f"{url}/Compare")
        await _settle(page, 240_000)
        await page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=240_000)
        t2 = time.perf_counter()
        return {
            "labels_s": round(t1 - t0, 2),
            "compare_s": round(t2 - t1, 2),
            "uploads": uploads,
            "retries": retries,
            "context": context,
        }
    except Exception as e:
        text = await _page_text(page)
        await context.close()
        raise FerError(
            f"a browser session did not get {step} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"the page showed: {text!r}; the server log ends: {_log_tail(log)!r}"
        ) from e


async def _live_cycle(browser, url: str, close_mid_stream: bool) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1800}, permissions=["camera"])
    page = await context.new_page()
    await page.goto(f"{url}/Try_it")
    await _settle(page)
    await page.get_by_role("tab", name="Live video").click()
    await page.get_by_text("on this server (WebRTC", exact=False).click()  # the in-browser mode is the default
    toggle = page.locator(LIVE_TOGGLE["server"])
    await toggle.wait_for(timeout=120_000)  # the radio's rerun draws it (its first WebRTC import: slow when loaded)
    await toggle.click()
    await page.wait_for_function(LIVE_COUNTED, arg=5, timeout=180_000)
    if not close_mid_stream:
        await toggle.click()
        await page.wait_for_function("!document.body.innerText.includes('frames processed')", timeout=120_000)
    await context.close()  # a closed tab: the server learns it only when the connection drops


def _settled(pid: int, target_threads: int, timeout: float = 120.0) -> dict:
    """The server's stats once its thread count is back to ``target_threads`` (or after ``timeout``): a
    closed WebRTC session is torn down by the server some seconds after the tab goes."""
    deadline = time.time() + timeout
    while True:
        stats = process_stats(pid)
        if stats["threads"] is None or stats["threads"] <= target_threads or time.time() > deadline:
            return {**stats, "waited_s": round(timeout - max(0.0, deadline - time.time()), 1)}
        time.sleep(1.0)


def _per(after: dict, before: dict, key: str, n: int, digits: int) -> float | None:
    return round((after[key] - before[key]) / n, digits) if before[key] is not None else None


async def _run(
    url: str, pid: int, photo: Path, video: Path, cycles: int, sessions: list[int], say, log: Path | None = None
) -> dict:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise FerError("bench --serve needs playwright: pip install playwright") from None
    out: dict = {}
    async with async_playwright() as p:
        args = CHROMIUM_ARGS + FAKE_CAMERA + [f"--use-file-for-fake-video-capture={video}"]
        browser = await p.chromium.launch(executable_path=_chromium(), args=args)
        warm = await _session(browser, url, photo, log)  # loads the models and every page once
        await warm["context"].close()
        await _live_cycle(browser, url, close_mid_stream=False)
        base = _settled(pid, 0, timeout=5)
        say(f"  server after a warm-up: {base['rss_mb']} MB, {base['threads']} threads")
        t0, trend = time.perf_counter(), []
        for i in range(cycles):
            await _live_cycle(browser, url, close_mid_stream=i % 4 == 3)
            trend.append(process_stats(pid)["rss_mb"])  # right after each cycle: does it climb or level off?
        after = _settled(pid, int(base["threads"] * 1.1) if base["threads"] else 0)
        say(
            f"  live video started and stopped {cycles}x ({cycles // 4} tabs closed mid-stream, "
            f"{time.perf_counter() - t0:.0f} s): {after['rss_mb']} MB, {after['threads']} threads"
        )
        out["live_cycles"] = {
            "cycles": cycles,
            "closed_mid_stream": cycles // 4,
            "before": base,
            "after": after,
            "threads_ratio": round(after["threads"] / base["threads"], 3) if base["threads"] else None,
            "rss_ratio": round(after["rss_mb"] / base["rss_mb"], 3) if base["rss_mb"] else None,
            "rss_mb_after_each_cycle": trend,
        }
        out["live_cycles"]["goal_met"] = bool(
            out["live_cycles"]["threads_ratio"] is not None
            and out["live_cycles"]["threads_ratio"] <= 1.1
            and out["live_cycles"]["rss_ratio"] <= 1.1
        )
        out["load"] = []
        for n in sessions:
            before = process_stats(pid)
            t0 = time.perf_counter()
            done = await asyncio.gather(*(_session(browser, url, photo, log) for _ in range(n)))
            wall = time.perf_counter() - t0
            loaded = process_stats(pid)
            for d in done:
                await d.pop("context").close()
            labels, compare = [d["labels_s"] for d in done], [d["compare_s"] for d in done]
            row = {
                "sessions": n,
                "wall_s": round(wall, 1),
                "labels_s_median": round(statistics.median(labels), 2),
                "labels_s_worst": max(labels),
                "compare_s_median": round(statistics.median(compare), 2),
                "compare_s_worst": max(compare),
                "rss_mb_before": before["rss_mb"],
                "rss_mb_with_sessions": loaded["rss_mb"],
                "rss_mb_per_session": _per(loaded, before, "rss_mb", n, 1),
                "server_cpu_s_per_session": _per(loaded, before, "cpu_s", n, 2),
                "uploads_sent_again": sum(d["uploads"] - 1 for d in done),
                "visits_made_again": sum(d["retries"] for d in done),
            }
            out["load"].append(row)
            say(
                f"  {n} sessions at once: labels median {row['labels_s_median']} s (worst {row['labels_s_worst']}), "
                f"Compare median {row['compare_s_median']} s (worst {row['compare_s_worst']}); server "
                f"{row['rss_mb_before']} -> {row['rss_mb_with_sessions']} MB ({row['rss_mb_per_session']} MB/session), "
                f"{row['server_cpu_s_per_session']} CPU-s/session; uploads sent again {row['uploads_sent_again']}, "
                f"visits made again {row['visits_made_again']}"
            )
        await browser.close()
    return out


def serve_bench(
    cycles: int = 20, sessions: list[int] | None = None, out_dir: str | None = None, quiet: bool = False
) -> dict:
    """Run both measurements against a fresh dashboard; write ``serve.json`` under results/bench/ (or
    ``out_dir``) and return it."""
    say = (lambda *a: None) if quiet else print
    sessions = sessions or [1, 4, 8]
    _chromium()
    with tempfile.TemporaryDirectory(prefix="fer-serve-") as tmp_name:
        tmp = Path(tmp_name)
        face = demo_frame(seed=3)
        photo, video = tmp / "face.png", tmp / "face.y4m"
        cv2.imwrite(str(photo), face)
        write_y4m(video, face)
        say(f"dashboard under a browser: live video {cycles}x on/off, then {sessions} sessions at once")
        with dashboard(tmp) as (url, pid):
            # a thread of its own: asyncio.run refuses to start inside a running loop (a caller's Playwright)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                doc = pool.submit(
                    asyncio.run, _run(url, pid, photo, video, cycles, sessions, say, tmp / "server.log")
                ).result()
    doc.update(cpus=os.cpu_count(), when=time.strftime("%Y-%m-%d %H:%M:%S"))
    out = Path(out_dir) if out_dir else RESULTS_DIR / "bench"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "serve.json", doc)
    say(f"written: {out / 'serve.json'}")
    return doc
