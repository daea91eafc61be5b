"""Real-browser walks through the product: every page, a tiny training from the Train page, its point on
the Compare scatter, and a webcam snapshot (Chromium's fake camera showing a drawn face); then, on a fresh
server, page URLs opened first (deep links) and live video over WebRTC labelling the fake camera's face.

Needs Debian's chromium and the playwright Python package (.ci/run installs both); skipped without them.
Screenshots of every page go to artifacts/screenshots/ (git-ignored).
"""

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import ROOT
from fer_core.serving.inference import demo_frame
from fer_core.studies.serve_bench import LIVE_TOGGLE, dashboard, serve_bench, write_y4m

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pw = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
SHOTS = ROOT / "artifacts" / "screenshots"


@contextlib.contextmanager
def streamlit_server(tmp: Path, reference: Path | None = None, extra_env: dict | None = None):
    """A fresh `streamlit run streamlit_app.py` on a free port (the benchmark's own launcher); yields its URL
    once it accepts connections. Its log is tmp/server.log."""
    env = {
        "FER_CACHE": str(tmp / "cache"),
        "FER_REFERENCE": str(reference or tmp / "no-reference"),
        "FER_STUDIES": str(tmp / "no-studies"),  # the shipped studies stay out, as the reference runs do
    }
    with dashboard(tmp, {**env, **(extra_env or {})}) as (url, _pid):
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    with streamlit_server(tmp) as url:
        yield url, tmp


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    video = tmp_path_factory.mktemp("cam") / "face.y4m"
    write_y4m(video, demo_frame(3))
    SHOTS.mkdir(parents=True, exist_ok=True)
    with pw.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={video}",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(server, browser):  # closed after its test: an open page keeps the fake camera and a session busy
    context = browser.new_context(viewport={"width": 1400, "height": 2400}, permissions=["camera"])
    yield context.new_page()
    context.close()


#: true once the camera widget's video element is playing real frames
CAMERA_PLAYING = """() => {
    const v = document.querySelector("[data-testid='stCameraInput'] video");
    return !!v && !v.paused && v.readyState >= 2 && v.videoWidth > 0 && v.currentTime > 0;
}"""


def _settle(page, timeout=60_000):
    """Wait until Streamlit has finished running the script."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def _set(page, role: str, label: str, value: str) -> None:
    box = page.get_by_role(role, name=label, exact=True)
    box.fill(value)
    box.press("Enter")
    _settle(page)


@pytest.mark.slow
def test_the_whole_path_in_a_real_browser(server, page):
    url, tmp = server
    page.goto(url)
    _settle(page)
    page.get_by_text("How small can a facial-expression model get").wait_for()
    page.get_by_text("synthetic faces").first.wait_for()
    page.screenshot(path=str(SHOTS / "home-empty.png"))

    page.goto(f"{url}/Train")
    _settle(page)
    page.get_by_role("radio", name="widths").check(force=True)
    _settle(page)
    _set(page, "textbox", "widths (comma-separated)", "0.25")
    _set(page, "spinbutton", "epochs", "2")
    _set(page, "spinbutton", "limit training images (0 = all)", "300")
    page.get_by_text("Planned: 2 trainings").wait_for()
    page.screenshot(path=str(SHOTS / "train-plan.png"))
    page.get_by_role("button", name="Start").click()
    page.get_by_text("started").first.wait_for(timeout=30_000)
    deadline = time.time() + 240
    runs = tmp / "runs"
    while time.time() < deadline:  # both trainings finish in their own processes
        done = [p for p in runs.glob("*/summary.json") if '"completed"' in p.read_text()]
        if len(done) == 2:
            break
        time.sleep(1)
    assert len(done) == 2
    # the jobs fragment re-reads the store every 2 s: wait until it shows both trainings done
    page.wait_for_function("document.body.innerText.split('· done').length - 1 >= 2", timeout=60_000)
    page.screenshot(path=str(SHOTS / "train-jobs.png"))

    page.goto(f"{url}/Compare")
    _settle(page)
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=120_000)
    points = page.locator(".js-plotly-plot").first.locator(".scatterlayer .point").count()
    assert points == 2
    page.screenshot(path=str(SHOTS / "compare.png"))

    page.goto(f"{url}/Try_it")
    _settle(page)
    # a click before the fake camera streams captures nothing: wait for its video to play frames
    page.wait_for_function(CAMERA_PLAYING, timeout=60_000)
    page.get_by_role("button", name="Take Photo").click()
    page.get_by_text("Face 1").wait_for(timeout=60_000)
    # one probability chart per model, drawn once Plotly has laid them out
    drawn = "[...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('.main-svg')).length"
    page.wait_for_function(f"{drawn} >= 2", timeout=30_000)
    assert page.locator(".js-plotly-plot").count() == 2
    page.screenshot(path=str(SHOTS / "try-it.png"))

    page.goto(url)
    _settle(page)
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=120_000)
    page.screenshot(path=str(SHOTS / "home.png"))


#: whether the server mode's Live video toggle is in the state given
CHECKED = f"""(want) => {{
    const box = document.querySelector("{LIVE_TOGGLE["server"]}");
    return !!box && box.querySelector('input').checked === want;
}}"""
SIDEBAR_PAGES = "[...document.querySelectorAll('[data-testid=\"stSidebarNav\"] a')].map(a => a.innerText.trim())"


def _sidebar(page) -> list[str]:
    """The sidebar's page links, once the app's navigation is shown (a first page run outside the app hands
    over to it with a rerun; the old-mode sidebar would list "streamlit app" and never change)."""
    page.wait_for_function(f"{SIDEBAR_PAGES}[0] === 'Home'", timeout=60_000)
    return page.evaluate(SIDEBAR_PAGES)


def test_deep_links_open_inside_the_app_and_live_video_labels_faces(browser, tmp_path):
    """A fresh server whose first request is a page's URL: the page opens inside the app (sidebar: Home,
    Train, Compare, Try it), every time; then Live video streams the fake camera through the server."""
    from fer_core.store.runs import REFERENCE_DIR

    with streamlit_server(tmp_path, reference=REFERENCE_DIR) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1800}, permissions=["camera"])
        page = context.new_page()
        for path in ("Try_it", "Compare", "Try_it"):
            page.goto(f"{url}/{path}")
            _settle(page)
            assert _sidebar(page) == ["Home", "Train", "Compare", "Try it"], path
        page.get_by_text("Try it", exact=True).first.wait_for()

        page.get_by_role("tab", name="Live video").click()
        page.get_by_text("on this server (WebRTC", exact=False).click()  # the in-browser mode is the default
        # its toggle, drawn by the radio's rerun (the first WebRTC import: slow on a loaded machine); both modes
        # label theirs "Live video", and the browser mode's stays on the page until that rerun ends
        toggle = page.locator(LIVE_TOGGLE["server"])
        toggle.wait_for(timeout=120_000)
        toggle.click()  # starts the stream
        page.wait_for_function(CHECKED, arg=True, timeout=60_000)
        # the server has processed frames and found the fake camera's face: counters the page polls
        counted = r"""() => {
            const m = document.body.innerText.match(/frames processed: (\d+)\D+faces: (\d+)/);
            return !!m && +m[1] >= 10 && +m[2] >= 1;
        }"""
        try:
            page.wait_for_function(counted, timeout=120_000)
        finally:
            page.screenshot(path=str(SHOTS / "live.png"))
        # the largest face's bars, one chart per selected model
        page.wait_for_function(
            "[...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('.main-svg')).length >= 2",
            timeout=60_000,
        )
        page.screenshot(path=str(SHOTS / "live.png"))
        text = page.evaluate("document.body.innerText")
        assert "the frame callback failed" not in text
        toggle.click()  # the toggle again: stops it
        page.wait_for_function(CHECKED, arg=False, timeout=60_000)
        page.wait_for_function("!document.body.innerText.includes('frames processed')", timeout=60_000)
        context.close()


def test_a_shared_dashboard_shows_only_its_lock_until_the_password_is_given(browser, tmp_path):
    """FER_LAB_PASSWORD set: a deep link shows the lock alone (no page, no sidebar); a wrong password is
    refused and cleared; the right one opens the page that was asked for. The password never reaches the URL
    or the server's log."""
    secret = "lab-" + os.urandom(8).hex()
    with streamlit_server(tmp_path, extra_env={"FER_LAB_PASSWORD": secret}) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1200})
        page = context.new_page()
        page.goto(f"{url}/Train")
        _settle(page)
        box = page.get_by_label("Password", exact=True)
        box.wait_for()
        assert page.get_by_role("button", name="Start", exact=True).count() == 0
        assert page.locator("[data-testid='stSidebarNav']").count() == 0
        box.fill("not it")
        page.get_by_role("button", name="Unlock").click()
        page.get_by_text("Wrong password").wait_for(timeout=30_000)
        assert box.input_value() == ""  # what was typed does not stay in the page
        box.fill(secret)
        page.get_by_role("button", name="Unlock").click()
        page.get_by_role("button", name="Start", exact=True).wait_for(timeout=60_000)  # the page asked for: Train
        page.screenshot(path=str(SHOTS / "unlocked.png"))
        assert secret not in page.url and page.url.rstrip("/").endswith("/Train")
        context.close()
    assert secret not in (tmp_path / "server.log").read_text()


@pytest.mark.slow
def test_the_serving_benchmark_measures_live_cycles_and_sessions_at_once(tmp_path, monkeypatch):
    """`bench --serve` in miniature (one live cycle, two sessions at once) against the shipped models."""
    monkeypatch.delenv("FER_REFERENCE")
    doc = serve_bench(cycles=1, sessions=[2], out_dir=str(tmp_path), quiet=True)
    live = doc["live_cycles"]
    assert live["cycles"] == 1 and live["before"]["threads"] > 0 and live["after"]["rss_mb"] > 0
    assert live["threads_ratio"] == round(live["after"]["threads"] / live["before"]["threads"], 3)
    (row,) = doc["load"]
    assert row["sessions"] == 2 and 0 < row["labels_s_median"] <= row["labels_s_worst"]
    assert 0 < row["compare_s_median"] <= row["compare_s_worst"] and row["rss_mb_with_sessions"] > 0
    assert (tmp_path / "serve.json").is_file()
