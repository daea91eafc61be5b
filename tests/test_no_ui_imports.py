"""fer_core's training side runs where streamlit, plotly and Ray are not installed (a GPU machine, CI workers)."""

import subprocess
import sys

from conftest import ROOT

BLOCK_UI = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('streamlit', 'plotly', 'ray'):
            raise ImportError(f'{name} is not installed here')
sys.meta_path.insert(0, Blocker())
import importlib, pkgutil
import fer_core
for m in pkgutil.walk_packages(fer_core.__path__, 'fer_core.'):  # every module: they import those only when used
    if not m.name.endswith('__main__'):
        importlib.import_module(m.name)
from fer_core.cli import main
sys.exit(main(['train', '--model', 'cnn', '--width', '0.1', '--data', 'synthetic', '--limit', '128',
               '--epochs', '1', '--quiet', '--out', sys.argv[1]]))
"""


def test_training_needs_neither_streamlit_nor_plotly(tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK_UI, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / r.stdout.strip().splitlines()[-1].split("/")[-1] / "weights.pt").is_file()


def test_no_fer_core_module_imports_streamlit():
    for path in (ROOT / "fer_core").rglob("*.py"):
        text = path.read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, path
