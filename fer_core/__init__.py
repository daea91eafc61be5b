"""FER Lab: how small can a facial-expression model get, and which architecture wins at each size?

The library behind the dashboard and ``python -m fer_core``, by domain, each package importing only those
below it (checked in CI by import-linter, see ``pyproject.toml``)::

    cli/        the command line (top)
    studies/    the reference study, the prepared GPU study, ONNX variants, the benchmark
    jobs/       trainings in their own processes: the local queue and the Ray backend
    analysis/   the runs table, Pareto frontiers, the matched-budget gap, figures, sweep planning
    serving/    faces in, expressions out: detection, crops, ONNX Runtime, live video
    training/   RunConfig and recipes, the training step, fit, evaluation
    store/      run folders, summaries, weights files, a run rebuilt as a torch model
    models/     families, registry, budget solver, stats
    data/       FER2013 in every form, synthetic faces, augmentation
    common/     labels, image size, FerError (bottom)

For notebooks, the names a user needs are here (imported on first use, so ``import fer_core`` stays
instant and pulls in neither torch nor any UI library)::

    import fer_core as fl
    model = fl.create_model("mobilenet", width=1.0)             # a network (torch.nn.Module)
    summary = fl.fit(fl.RunConfig.from_dict({...}))             # train one run into the results store
    fl.runs_table()                                             # every run, a pandas DataFrame
    result = fl.predict("photo.jpg", [fl.load_model(run_id)])  # faces found, each model's probabilities
"""

# The one thing importing fer_core does: keep freed memory for reuse (see fer_core.common.memory), before torch
# is imported, so the command line, the dashboard, every trainer and a notebook's fit() all train at full speed.
from fer_core.common.memory import tune_allocator as _tune_allocator

_tune_allocator()

#: The Python API: name -> (module, attribute), imported on first use; nothing else is imported here.
_API = {
    "__version__": ("fer_core.common", "VERSION"),
    "EMOTIONS": ("fer_core.common", "EMOTIONS"),
    "NUM_CLASSES": ("fer_core.common", "NUM_CLASSES"),
    "IMAGE_SIZE": ("fer_core.common", "IMAGE_SIZE"),
    "FerError": ("fer_core.common", "FerError"),
    "create_model": ("fer_core.models", "create_model"),
    "list_models": ("fer_core.models", "list_models"),
    "solve_width": ("fer_core.models", "solve_width"),
    "count_params": ("fer_core.models", "count_params"),
    "load_data": ("fer_core.data.sources", "load"),
    "RunConfig": ("fer_core.training.config", "RunConfig"),
    "fit": ("fer_core.training.trainer", "fit"),
    "runs_table": ("fer_core.store.runs", "table"),
    "find_run": ("fer_core.store.runs", "find_run"),
    "load_model": ("fer_core.serving.models", "load_model"),
    "predict": ("fer_core.serving.inference", "predict"),
    "load_image": ("fer_core.serving.inference", "load_image"),
    "demo_frame": ("fer_core.serving.inference", "demo_frame"),
}

__all__ = [  # the API above, spelled out for tools that read __all__ without running code
    "EMOTIONS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "FerError",
    "RunConfig",
    "__version__",
    "count_params",
    "create_model",
    "demo_frame",
    "find_run",
    "fit",
    "list_models",
    "load_data",
    "load_image",
    "load_model",
    "predict",
    "runs_table",
    "solve_width",
]

TYPE_CHECKING = False  # typing itself costs more to import than all of this module: type checkers know the idiom
if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from fer_core.common import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, FerError
    from fer_core.common import VERSION as __version__
    from fer_core.data.sources import load as load_data
    from fer_core.models import count_params, create_model, list_models, solve_width
    from fer_core.serving.inference import demo_frame, load_image, predict
    from fer_core.serving.models import load_model
    from fer_core.store.runs import find_run
    from fer_core.store.runs import table as runs_table
    from fer_core.training.config import RunConfig
    from fer_core.training.trainer import fit


def __getattr__(name):
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'fer_core' has no attribute {name!r}") from None
    value = getattr(__import__(module, fromlist=[attr]), attr)
    globals()[name] = value  # next time it is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
