"""The results store: what a training leaves on disk, and how it is read back.

Owns: run folders and their status, summaries, metrics and lineage (``runs``: one folder per run, the runs
table every page and command lists), files that never tear and weights files that load without running
pickled code (``files``), and a run or weights file rebuilt as a torch model (``loading``). May import
:mod:`fer_core.models`, :mod:`fer_core.data` and :mod:`fer_core.common`; never training, serving or above.
"""

from fer_core.store.files import atomic_write_json, load_weights_file, read_json
from fer_core.store.loading import LoadedModel, NotTrainedModel, load_torch_model
from fer_core.store.runs import Run, find_run, iter_runs, list_summaries, reference_dir, runs_dir, table

__all__ = [
    "LoadedModel",
    "NotTrainedModel",
    "Run",
    "atomic_write_json",
    "find_run",
    "iter_runs",
    "list_summaries",
    "load_torch_model",
    "load_weights_file",
    "read_json",
    "reference_dir",
    "runs_dir",
    "table",
]
