"""Where things are on disk: the package, and the project folder around it (``results/``, ``data/``).

Not imported by ``fer_core.common`` itself, so ``import fer_core`` stays free of pathlib.
"""

import os
from pathlib import Path

#: The ``fer_core`` package folder, and the project folder around it.
PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_DIR = PACKAGE_DIR.parent


def cache_dir() -> Path:
    """Where derived files are kept (parsed arrays, teachers' tables, compiled kernels): ``$FER_CACHE``, else
    ``~/.cache/fer-lab``."""
    return Path(os.environ.get("FER_CACHE") or Path.home() / ".cache" / "fer-lab")
