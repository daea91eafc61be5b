"""FER2013 in every form people have it, validated, cached, and described.

Every loader returns a :class:`FerData`: three splits of uint8 48x48 images with labels in the FER order
(see :data:`fer_core.EMOTIONS`), plus what was loaded and any caveat (``notes``). Bad input raises
:class:`~fer_core.common.FerError` naming the file and the row or image; nothing is written then.

Sources, by what ``--data`` / ``FER_DATA`` points at:

- ``fer2013.npz`` (arrays ``train_x``, ``train_y``, ``public_x`` ...) or its WebP twin ``fer2013_carry.npz``;
- Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``) and ``icml_face_data.csv`` (``emotion, Usage, pixels``);
- torchvision's layout, ``fer2013/train.csv`` + ``test.csv``;
- image folders ``train/<emotion>/*`` + ``test/<emotion>/*`` (optionally ``val/``), any size, any colour;
- ``synthetic``: procedurally drawn faces (:mod:`fer_core.data.synthetic`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from fer_core.common import FerError
from fer_core.common.paths import PROJECT_DIR, cache_dir
from fer_core.data.dataset import SPLITS, FerData, validate
from fer_core.data.formats import LOADERS, find_in_dir, kind_of, load_npz
from fer_core.data.synthetic import DEFAULT_SIZES, make_split

_CACHE_VERSION = "1"


# --------------------------------------------------------------------------------------------------- finding data


def repo_data_dir() -> Path:
    """The git-ignored ``data/`` folder at the project's root, the last place looked for FER2013."""
    return PROJECT_DIR / "data"


def resolve_spec(spec: str | os.PathLike | None = None) -> str:
    """Where the data comes from: ``spec`` if given, else ``$FER_DATA``, else ``data/``, else ``synthetic``."""
    if spec:
        return str(spec)
    env = os.environ.get("FER_DATA", "").strip()
    if env:
        if env != "synthetic" and not Path(env).exists():
            raise FerError(f"FER_DATA points at {env}, which does not exist")
        return env
    d = repo_data_dir()
    if d.is_dir() and find_in_dir(d) is not None:
        return str(d)
    return "synthetic"


def make_synthetic(n_train: int | None = None, seed: int = 0) -> FerData:
    """Synthetic faces (train/public/private) drawn by :mod:`fer_core.data.synthetic`, named ``synthetic``."""
    sizes = dict(DEFAULT_SIZES)
    if n_train:
        sizes = {"train": n_train, "public": max(70, n_train // 6), "private": max(70, n_train // 6)}
    splits = {s: make_split(n, seed, i) for i, (s, n) in enumerate(sizes.items())}
    note = f"synthetic faces (seed {seed}): procedurally drawn, not FER2013"
    return FerData.from_splits("synthetic", "synthetic", None, splits, [note])


def load(spec: str | os.PathLike | None = None, *, cache: bool = True, synthetic_seed: int = 0) -> FerData:
    """Load the data named by ``spec`` (see :func:`resolve_spec`) and validate it.

    Args:
        spec: a file, a folder, ``"synthetic"``, or None to look in the usual places.
        cache: reuse (and write) parsed arrays for slow sources (CSV, image folders, WebP npz).
        synthetic_seed: seed of the synthetic faces when those are used.
    """
    spec = resolve_spec(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        size = spec.partition(":")[2]
        return make_synthetic(n_train=int(size) if size else None, seed=synthetic_seed)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FerError(f"data path {path} does not exist")
    if path.is_dir():
        found = find_in_dir(path)
        if found is None:
            raise FerError(
                f"no FER2013 found in folder {path}: expected fer2013.npz, fer2013.csv, icml_face_data.csv, "
                "train.csv + test.csv (or fer2013/ holding them), or train/<emotion>/ and test/<emotion>/ image folders"
            )
        path = found
    kind = kind_of(path)
    if kind in ("npz",):
        data = load_npz(path)
    else:
        data = _cached(path, kind) if cache else LOADERS[kind](path)
    validate(data)
    return data


# --------------------------------------------------------------------------------------------------- loaders


# --------------------------------------------------------------------------------------------------- cache


def _source_stamp(path: Path) -> str:
    """Changes whenever the source changes: path, sizes and modification times of every file in it."""
    h = hashlib.sha1(f"{_CACHE_VERSION}|{path.resolve()}".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _cached(path: Path, kind: str) -> FerData:
    stamp = _source_stamp(path)
    file = cache_dir() / f"{stamp}.npz"
    if file.is_file():
        try:
            with np.load(file) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
            return FerData(path=str(path), **meta, **arrays)
        except Exception:
            pass  # a damaged cache is rebuilt below
    data = LOADERS[kind](path)
    meta = {"name": data.name, "kind": data.kind, "notes": data.notes, "shared_test": data.shared_test}
    arrays = {f"{s}_{p}": getattr(data, f"{s}_{p}") for s in SPLITS for p in "xy"}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only home is no reason to fail: we only lose the speed-up
    return data


# --------------------------------------------------------------------------------------------------- validation
