"""FER Lab core library: data, models, training, results store and inference for FER2013 studies.

Nothing in this package imports streamlit or plotly at import time, so training runs on machines
that have neither (figures live in ``fer_core.figures`` and import plotly lazily).
"""

__version__ = "0.1.0"

#: FER2013 label order (the dataset's own codes 0..6).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
IMAGE_SIZE = 48
