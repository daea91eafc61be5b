"""The floor every other package stands on: the FER2013 label order and image size, and ``FerError``.

Owns no behaviour, imports nothing of ``fer_core`` and no third-party package, so any layer may import it
(``paths`` says where the package and the project folder are).
"""

from .constants import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, VERSION
from .errors import DiskFull, FerError

__all__ = ["EMOTIONS", "IMAGE_SIZE", "NUM_CLASSES", "VERSION", "DiskFull", "FerError"]
