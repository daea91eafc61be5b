"""Shared by the page scripts (Streamlit never lists an ``__init__.py`` as a page)."""

import streamlit as st


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
