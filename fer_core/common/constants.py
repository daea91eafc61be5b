"""What every layer agrees on: the label order, the image size, the library's version."""

VERSION = "0.1.0"

#: FER2013 label order (the dataset's own codes 0..6).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
IMAGE_SIZE = 48
