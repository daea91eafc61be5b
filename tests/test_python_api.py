"""The README's "Use from Python" example runs as written on a fresh clone."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_the_readme_python_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "FER_RUNS": str(tmp_path / "runs"), "FER_CACHE": str(tmp_path / "cache")}
    env.pop("FER_REFERENCE", None)  # as on a fresh clone: the shipped runs are listed too
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert out[0] == "107247"
    assert any("reference" not in line and "mobilenet" in line for line in out[1:])
    faces = [line for line in out if line.startswith("(")]
    assert len(faces) == 1 and "mobilenet-w0.25" in faces[0], r.stdout
