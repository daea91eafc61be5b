"""The dashboard's password lock: the check itself (digests, delays shared by every session), and every page
showing nothing but the lock until the password is given (AppTest; the real browser is in test_browser)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

import fer_core.access.lock as lock_mod
from conftest import ROOT
from fer_core.access.lock import DELAYS_S, WINDOW_S, Lock, configured_password

PASSWORD = "correct horse battery staple"
PAGES = ["streamlit_app.py", "pages/1_Train.py", "pages/2_Compare.py", "pages/3_Try_it.py"]


class Clock:
    def __init__(self):
        self.now, self.slept = 1000.0, []

    def sleep(self, s):
        self.slept.append(s)
        self.now += s

    def __call__(self):
        return self.now


def test_wrong_guesses_wait_longer_each_time_and_the_right_one_never_waits():
    clock = Clock()
    lock = Lock(PASSWORD, sleep=clock.sleep, clock=clock)
    assert [lock.check(g) for g in ("", "correct horse", PASSWORD.upper(), "x" * 10_000, "a", "b")] == [False] * 6
    assert clock.slept == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0] and list(DELAYS_S) == [1.0, 2.0, 4.0, 8.0]
    assert lock.check(PASSWORD) and len(clock.slept) == 6  # the right password: no delay, even after wrong ones
    clock.now += WINDOW_S + 1  # wrong guesses that old are forgotten
    assert not lock.check("c") and clock.slept[-1] == 1.0


def test_fingerprints_name_the_password_without_revealing_it():
    a, b = Lock(PASSWORD), Lock(PASSWORD + "!")
    assert a.fingerprint() == Lock(PASSWORD).fingerprint() != b.fingerprint()
    assert PASSWORD not in a.fingerprint() and len(a.fingerprint()) == 64
    with pytest.raises(ValueError):
        Lock("")


def test_the_password_comes_from_the_environment_else_the_secrets(monkeypatch):
    monkeypatch.delenv("FER_LAB_PASSWORD", raising=False)
    assert configured_password(None) is None and configured_password({}) is None
    assert configured_password({"FER_LAB_PASSWORD": "s3"}) == "s3"
    assert configured_password({"FER_LAB_PASSWORD": ""}) is None  # empty = unlocked, as unset
    monkeypatch.setenv("FER_LAB_PASSWORD", "env")
    assert configured_password({"FER_LAB_PASSWORD": "s3"}) == "env"


@pytest.fixture
def locked(monkeypatch):
    """FER_LAB_PASSWORD set; the process's lock for it records its delays instead of sleeping."""
    monkeypatch.setenv("FER_LAB_PASSWORD", PASSWORD)
    monkeypatch.setenv("FER_DATA", "synthetic")
    clock = Clock()
    monkeypatch.setattr(lock_mod, "_LOCKS", {lock_mod._digest(PASSWORD): Lock(PASSWORD, clock.sleep, clock)})
    return clock


def _shows_only_the_lock(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert [t.label for t in at.text_input] == ["Password"]
    assert [b.label for b in at.button] == ["Unlock"]  # no Start, Cancel, quick demo...
    assert not at.get("plotly_chart") and not at.dataframe and not at.tabs


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_only_the_lock_until_the_password_is_given(page, locked):
    at = AppTest.from_file(str(ROOT / page), default_timeout=120).run()
    _shows_only_the_lock(at)


def test_a_wrong_password_is_refused_after_a_delay_and_the_right_one_opens_the_page(locked):
    at = AppTest.from_file(str(ROOT / "pages/1_Train.py"), default_timeout=120).run()
    at.text_input[0].input("guess")
    at.button[0].click().run()
    _shows_only_the_lock(at)
    assert any("Wrong password" in e.value for e in at.error) and locked.slept == [1.0]
    at.text_input[0].input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(b.label == "Start" for b in at.button) and locked.slept == [1.0]
    assert at.session_state["_fer_lab_unlocked"] == lock_mod.password_lock(PASSWORD).fingerprint()
    assert at.text_input[0].label != "Password"
    at.run()  # the session stays unlocked on its next run
    assert any(b.label == "Start" for b in at.button)


def test_without_a_password_the_dashboard_is_open(monkeypatch):
    monkeypatch.delenv("FER_LAB_PASSWORD", raising=False)
    monkeypatch.setenv("FER_DATA", "synthetic")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    assert not at.exception and "Password" not in [t.label for t in at.text_input]
    assert any(b.label == "Start the quick demo" for b in at.button)
