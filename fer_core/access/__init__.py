"""Who may use a shared FER Lab: the dashboard's password lock (``lock``).

Owns the decision, not the screen: the pages draw the lock and call :func:`lock.password_lock`; nothing here
imports streamlit. Ray's token lives beside the Ray backend (``fer_core.jobs.ray_auth``). Imports only common.
"""
