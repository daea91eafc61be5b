"""Shared by the page scripts (Streamlit never lists an ``__init__.py`` as a page)."""

import gc

import streamlit as st

from fer_core.access.lock import PASSWORD_ENV, configured_password, password_lock
from fer_core.store.runs import store_notes

_UNLOCKED = "_fer_lab_unlocked"  # the session's proof of the password: a fingerprint, never the password


_FROZEN = []


def freeze_imports() -> None:
    """Once per server process: move the objects alive now (the modules of torch, pandas, plotly, fer_core...)
    out of the garbage collector's sight. Streamlit runs a full collection after every script run, fragments
    included; over those objects it cost ~150 ms of CPU per run (measured: the in-browser live mode's stats
    message, once a second, kept the server at 16-18% of a core; 0.6% without the messages). Objects made later
    are collected as before."""
    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)


def guard() -> None:
    """A page's first call: run inside the app's navigation, and show nothing until a shared dashboard's
    password is given (the app checks before navigating; this catches a page that runs alone)."""
    freeze_imports()
    inside_app()
    if not unlocked():
        lock_screen()
        st.stop()
    store_notes_ui()


def store_notes_ui() -> None:
    """The results store's duplicate and damaged run folders, one warning each, naming the file (every page)."""
    for note in store_notes():
        st.warning(note, icon="⚠️")


def _secrets():
    """Streamlit's secrets, or None without a secrets file; a file that does not parse stops the page
    (failing closed: it may hold the password)."""
    try:
        return st.secrets if st.secrets.load_if_toml_exists() else None
    except Exception as e:
        st.error(f"The dashboard's secrets file does not parse ({type(e).__name__}); fix it, or set {PASSWORD_ENV}.")
        st.stop()


def unlocked() -> bool:
    """True when no password is set, or this browser session has given it."""
    password = configured_password(_secrets())
    return password is None or st.session_state.get(_UNLOCKED) == password_lock(password).fingerprint()


def lock_screen() -> None:
    """The only thing a locked dashboard shows: a password form (sent over the page's websocket, never in the
    URL; cleared on submit)."""
    password = configured_password(_secrets())
    if password is None:  # unset since the check: nothing to lock
        st.rerun()
    lock = password_lock(password)
    st.title("FER Lab")
    st.write("This dashboard is shared and locked. Ask whoever runs it for the password.")
    with st.form("fer-lab-unlock", clear_on_submit=True):
        guess = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Unlock", type="primary")
    if submitted:
        if lock.check(guess):
            st.session_state[_UNLOCKED] = lock.fingerprint()
            st.rerun()
        st.error("Wrong password. Each wrong try makes the next answer slower.")


def inside_app() -> None:
    """Make a page opened by its own URL run inside the app's navigation, on a freshly started server too.

    Streamlit starts every server in its old multipage mode when a ``pages/`` folder exists and leaves it only
    once ``streamlit_app.py`` has called ``st.navigation``. So the first request of a fresh server, if it is a
    page's URL, runs that page alone: the sidebar then lists "streamlit app" instead of Home. Here that page
    switches the old mode off and reruns, which runs ``streamlit_app.py`` and, through its navigation, this
    same page. (``PagesManager.uses_pages_directory`` is Streamlit's own switch, set the same way by
    ``st.navigation``; if a Streamlit version moves it, pages still open, as before, without this fix.)
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()
