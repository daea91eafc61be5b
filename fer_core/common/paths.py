"""Where things are on disk: the package, and the project folder around it (``results/``, ``data/``).

Not imported by ``fer_core.common`` itself, so ``import fer_core`` stays free of pathlib.
"""

from pathlib import Path

#: The ``fer_core`` package folder, and the project folder around it.
PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_DIR = PACKAGE_DIR.parent
