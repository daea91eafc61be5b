"""The results store: what a training leaves on disk, and how it is read back.

Owns: run folders and their status, summaries, metrics and lineage (``runs``: one folder per run, the runs
table every page and command lists), files that never tear and weights files that load without running
pickled code (``files``), and a run or weights file rebuilt as a torch model (``loading``). May import
:mod:`fer_core.models`, :mod:`fer_core.data` and :mod:`fer_core.common`; never training, serving or above.
"""
