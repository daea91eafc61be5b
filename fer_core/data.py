"""FER2013 in every form people have it, validated, cached, and described.

Every loader returns a :class:`FerData`: three splits of uint8 48x48 images with labels in the FER order
(see :data:`fer_core.EMOTIONS`), plus what was loaded and any caveat (``notes``). Bad input raises
:class:`~fer_core.errors.FerError` naming the file and the row or image; nothing is written then.

Sources, by what ``--data`` / ``FER_DATA`` points at:

- ``fer2013.npz`` (arrays ``train_x``, ``train_y``, ``public_x`` ...) or its WebP twin ``fer2013_carry.npz``;
- Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``) and ``icml_face_data.csv`` (``emotion, Usage, pixels``);
- torchvision's layout, ``fer2013/train.csv`` + ``test.csv``;
- image folders ``train/<emotion>/*`` + ``test/<emotion>/*`` (optionally ``val/``), any size, any colour;
- ``synthetic``: procedurally drawn faces (:mod:`fer_core.synthetic`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import EMOTIONS, IMAGE_SIZE, NUM_CLASSES
from .errors import FerError

SPLITS = ("train", "public", "private")
#: The canonical FER2013 split sizes; a source with exactly these is called "fer2013".
FER2013_SIZES = {"train": 28709, "public": 3589, "private": 3589}
_USAGE = {"training": "train", "publictest": "public", "privatetest": "private"}
_CACHE_VERSION = "1"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
_CLASS_ALIASES = {
    **{name: i for i, name in enumerate(EMOTIONS)},
    **{str(i): i for i in range(NUM_CLASSES)},
    "anger": 0,
    "disgusted": 1,
    "fearful": 2,
    "happiness": 3,
    "sadness": 4,
    "surprised": 5,
}
_FOLDER_ROLES = {
    "train": "train",
    "training": "train",
    "val": "public",
    "valid": "public",
    "validation": "public",
    "publictest": "public",
    "public": "public",
    "test": "test",
    "privatetest": "private",
    "private": "private",
}


@dataclass
class FerData:
    """Three labelled splits of 48x48 uint8 faces and a description of where they came from."""

    name: str  # "fer2013", "synthetic", or "custom" for other data in a FER2013 format
    kind: str  # which loader read it: npz, webp-npz, kaggle-csv, icml-csv, torchvision-csv, image-folders, synthetic
    path: str | None  # the file or folder it was read from (None for synthetic)
    train_x: np.ndarray
    train_y: np.ndarray
    public_x: np.ndarray
    public_y: np.ndarray
    private_x: np.ndarray
    private_y: np.ndarray
    notes: list[str] = field(default_factory=list)  # caveats worth showing the user
    shared_test: bool = False  # True when public and private are the same images (one test split only)
    _fingerprint: str | None = field(default=None, repr=False)

    @classmethod
    def from_splits(cls, name: str, kind: str, path: str | None, splits: dict, notes: list[str], shared: bool = False):
        """Build from ``{"train": (x, y), "public": (x, y), "private": (x, y)}``."""
        arrays = {f"{s}_{p}": splits[s][i] for s in SPLITS for i, p in enumerate("xy")}
        return cls(name=name, kind=kind, path=path, notes=notes, shared_test=shared, **arrays)

    @property
    def synthetic(self) -> bool:
        return self.name == "synthetic"

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in SPLITS:
            raise FerError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    @property
    def fingerprint(self) -> str:
        """A short hash of every pixel and label: two runs with the same fingerprint saw the same data."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=8)
            for s in SPLITS:
                x, y = self.split(s)
                h.update(np.ascontiguousarray(x).tobytes())
                h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def counts(self) -> dict[str, list[int]]:
        """Images per class for each split, in the FER order."""
        return {s: np.bincount(self.split(s)[1], minlength=NUM_CLASSES).tolist() for s in SPLITS}

    def limit_train(self, n: int | None) -> FerData:
        """The same data with only the first ``n`` training images (for quick CPU runs)."""
        if not n or n >= len(self.train_y):
            return self
        if n < 1:
            raise FerError(f"--limit must be a positive number of images, got {n}")
        out = FerData(**{k: v for k, v in self.__dict__.items() if k != "_fingerprint"})
        out.train_x, out.train_y = self.train_x[:n], self.train_y[:n]
        out.notes = [*self.notes, f"training limited to the first {n} of {len(self.train_y)} images"]
        return out

    def describe(self) -> dict:
        """A JSON-ready summary: source, counts per split and class, notes."""
        return {
            "data": self.name,
            "kind": self.kind,
            "file": Path(self.path).name if self.path else None,
            "synthetic": self.synthetic,
            "fingerprint": self.fingerprint,
            "shared_test": self.shared_test,
            "classes": list(EMOTIONS),
            "counts": self.counts(),
            "sizes": {s: int(len(self.split(s)[1])) for s in SPLITS},
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------------- finding data


def repo_data_dir() -> Path:
    """The git-ignored ``data/`` folder at the project's root, the last place looked for FER2013."""
    return Path(__file__).resolve().parent.parent / "data"


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
    if d.is_dir() and _find_in_dir(d) is not None:
        return str(d)
    return "synthetic"


def make_synthetic(n_train: int | None = None, seed: int = 0) -> FerData:
    """Synthetic faces (train/public/private) drawn by :mod:`fer_core.synthetic`, named ``synthetic``."""
    from .synthetic import DEFAULT_SIZES, make_split  # drawing only: synthetic never imports data

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
        found = _find_in_dir(path)
        if found is None:
            raise FerError(
                f"no FER2013 found in folder {path}: expected fer2013.npz, fer2013.csv, icml_face_data.csv, "
                "train.csv + test.csv (or fer2013/ holding them), or train/<emotion>/ and test/<emotion>/ image folders"
            )
        path = found
    kind = _kind_of(path)
    if kind in ("npz",):
        data = _load_npz(path)
    else:
        data = _cached(path, kind) if cache else _LOADERS[kind](path)
    _validate(data)
    return data


def _find_in_dir(d: Path) -> Path | None:
    for name in ("fer2013.npz", "fer2013_carry.npz", "fer2013.csv", "icml_face_data.csv"):
        if (d / name).is_file():
            return d / name
    for sub in (d, d / "fer2013"):
        if (sub / "train.csv").is_file():
            return sub
    if any((d / n).is_dir() for n in ("train", "Train", "training", "Training")):
        return d
    npz = sorted(d.glob("*.npz"))
    return npz[0] if npz else None


def _kind_of(path: Path) -> str:
    if path.is_dir():
        return "torchvision-csv" if (path / "train.csv").is_file() else "image-folders"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path) as z:
                keys = set(z.files)
        except Exception as e:  # a corrupt or truncated file
            raise FerError(f"{path}: not a readable .npz file ({e})") from None
        if "train_webp" in keys:
            return "webp-npz"
        if "train_x" in keys:
            return "npz"
        raise FerError(f"{path}: .npz without train_x/train_y arrays (found: {', '.join(sorted(keys)) or 'none'})")
    if suffix == ".csv":
        if path.name == "train.csv":
            return "torchvision-csv"
        return "icml-csv" if "icml" in path.name.lower() else "kaggle-csv"
    raise FerError(f"{path}: unsupported data file (use a FER2013 .csv or .npz, or a folder)")


# --------------------------------------------------------------------------------------------------- loaders


def _finish(kind: str, path: Path, splits: dict, notes: list[str], shared: bool) -> FerData:
    sizes = {s: len(splits[s][1]) for s in SPLITS}
    canonical = sizes == FER2013_SIZES or (
        shared and sizes["train"] == FER2013_SIZES["train"] and sizes["public"] in (3589, 7178)
    )
    return FerData.from_splits("fer2013" if canonical else "custom", kind, str(path), splits, notes, shared)


def _load_npz(path: Path) -> FerData:
    try:
        with np.load(path) as z:
            splits = {}
            for s in SPLITS:
                if f"{s}_x" not in z.files or f"{s}_y" not in z.files:
                    raise FerError(f"{path}: missing arrays {s}_x / {s}_y")
                splits[s] = (np.asarray(z[f"{s}_x"]), np.asarray(z[f"{s}_y"]))
            recon = int(sum(z[f"{s}_recon"].sum() for s in SPLITS if f"{s}_recon" in z.files))
    except FerError:
        raise
    except Exception as e:
        raise FerError(f"{path}: could not read the arrays ({e})") from None
    for s, (x, y) in splits.items():
        _check_arrays(path, s, x, y)
        splits[s] = (x.astype(np.uint8, copy=False), y.astype(np.int64, copy=False))
    notes = [f"{recon} images were reconstructed (see the dataset README)"] if recon else []
    return _finish("npz", path, splits, notes, shared=False)


def _load_webp_npz(path: Path) -> FerData:
    from PIL import Image

    splits = {}
    with np.load(path) as z:
        for s in SPLITS:
            try:
                blob, offsets, y = z[f"{s}_webp"], z[f"{s}_offsets"], z[f"{s}_y"]
            except KeyError as e:
                raise FerError(f"{path}: missing array {e}") from None
            x = np.empty((len(offsets) - 1, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            for i in range(len(x)):
                try:
                    img = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("L")
                    x[i] = np.asarray(img)
                except Exception as e:
                    raise FerError(f"{path}: {s} image {i} could not be decoded ({e})") from None
            splits[s] = (x, y.astype(np.int64))
            _check_arrays(path, s, *splits[s])
    return _finish("webp-npz", path, splits, [], shared=False)


def _read_csv(path: Path, required: set[str]):
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    except Exception as e:  # ParserError names the line
        raise FerError(f"{path}: not a readable CSV ({str(e).strip()})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = required - set(df.columns)
    if missing:
        raise FerError(
            f"{path}: missing column(s) {', '.join(sorted(missing))}; found {', '.join(df.columns) or 'none'} "
            f"(expected {', '.join(sorted(required))})"
        )
    if len(df) == 0:
        raise FerError(f"{path}: no rows")
    return df


def _parse_labels(path: Path, values) -> np.ndarray:
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        v = v.strip()
        if not v.isdigit() or int(v) >= NUM_CLASSES:
            raise FerError(f"{path}: line {i + 2}: emotion {v!r} is not a label 0-6")
        out[i] = int(v)
    return out


def _parse_pixels(path: Path, values) -> np.ndarray:
    """Parse pixel strings fast; on any problem, find and name the first bad line."""
    n = len(values)
    flat = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fromstring warns (and stops) at a non-number; we check the length
        try:
            flat = np.fromstring(" ".join(values), dtype=np.int64, sep=" ")
        except Exception:
            flat = None
    if flat is not None and flat.size == n * IMAGE_SIZE * IMAGE_SIZE and flat.min() >= 0 and flat.max() <= 255:
        return flat.astype(np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)
    for i, v in enumerate(values):
        tokens = v.split()
        if len(tokens) != IMAGE_SIZE * IMAGE_SIZE:
            raise FerError(f"{path}: line {i + 2}: pixels has {len(tokens)} values, expected 2304 (48x48)")
        for t in tokens:
            if not t.isdigit() or int(t) > 255:
                raise FerError(f"{path}: line {i + 2}: pixel value {t!r} is not an integer 0-255")
    raise FerError(f"{path}: could not parse the pixels column")  # pragma: no cover - the loop names the row


def _load_kaggle_csv(path: Path, kind: str = "kaggle-csv") -> FerData:
    df = _read_csv(path, {"emotion", "pixels", "usage"})
    y = _parse_labels(path, df["emotion"].tolist())
    x = _parse_pixels(path, df["pixels"].tolist())
    usage = df["usage"].str.strip().str.lower().tolist()
    role = np.empty(len(usage), dtype=object)
    for i, u in enumerate(usage):
        if u not in _USAGE:
            raise FerError(f"{path}: line {i + 2}: Usage {df['usage'][i]!r} is not Training, PublicTest or PrivateTest")
        role[i] = _USAGE[u]
    splits = {s: (x[role == s], y[role == s]) for s in SPLITS}
    notes, shared = [], False
    if len(splits["train"][1]) == 0:
        raise FerError(f"{path}: no Training rows")
    if len(splits["public"][1]) == 0 and len(splits["private"][1]) == 0:
        raise FerError(f"{path}: no PublicTest or PrivateTest rows")
    for a, b in (("public", "private"), ("private", "public")):
        if len(splits[a][1]) == 0:
            splits[a] = splits[b]
            shared = True
            notes.append(f"{path.name} has no {a} test rows: the {b} split is used for both roles")
    return _finish(kind, path, splits, notes, shared)


def _load_icml_csv(path: Path) -> FerData:
    return _load_kaggle_csv(path, "icml-csv")


def _load_torchvision(path: Path) -> FerData:
    root = path if path.is_dir() else path.parent
    train_csv, test_csv = root / "train.csv", root / "test.csv"
    df = _read_csv(train_csv, {"emotion", "pixels"})
    train = (_parse_pixels(train_csv, df["pixels"].tolist()), _parse_labels(train_csv, df["emotion"].tolist()))
    notes = []
    if test_csv.is_file():
        tdf = _read_csv(test_csv, {"pixels"})
        if "emotion" in tdf.columns:
            test = (_parse_pixels(test_csv, tdf["pixels"].tolist()), _parse_labels(test_csv, tdf["emotion"].tolist()))
            notes.append("torchvision layout has one labelled test split (test.csv): used as both public and private")
        else:
            test = None
            notes.append("test.csv has no emotion column (unlabelled)")
    else:
        test = None
        notes.append("no test.csv next to train.csv")
    if test is None:
        n_hold = max(1, len(train[1]) // 10)
        test = (train[0][-n_hold:], train[1][-n_hold:])
        train = (train[0][:-n_hold], train[1][:-n_hold])
        notes.append(f"the last {n_hold} rows of train.csv are held out as the test split (public = private)")
    return _finish("torchvision-csv", root, {"train": train, "public": test, "private": test}, notes, True)


def _read_image(file: Path) -> np.ndarray:
    """Any image file as 48x48 gray uint8; honours EXIF rotation; clear error when unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as img:
            img = ImageOps.exif_transpose(img)
            return to_gray48(np.asarray(img.convert("RGBA") if img.mode == "P" else img))
    except FerError:
        raise
    except Exception as e:
        raise FerError(f"{file}: unreadable image ({type(e).__name__}: {e})") from None


def to_gray48(arr: np.ndarray) -> np.ndarray:
    """Any 2-D or 3-D image array (gray, RGB, RGBA, 16-bit, float) as 48x48 uint8 gray."""
    import cv2

    return cv2.resize(to_gray_u8(arr), (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def to_gray_u8(arr: np.ndarray) -> np.ndarray:
    """Any image array as uint8 gray at its own size."""
    import cv2

    a = np.asarray(arr)
    if a.dtype == np.uint16 or a.dtype == np.int32:
        a = (a.astype(np.float32) / (65535.0 if a.max() > 255 else 255.0) * 255.0).round()
    elif a.dtype == bool:
        a = a.astype(np.float32) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float32)) * (255.0 if a.max() <= 1.0 else 1.0)
    a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3:
        if a.shape[2] == 4:  # composite on white so transparent areas do not turn black
            alpha = a[:, :, 3:4].astype(np.float32) / 255.0
            a = (a[:, :, :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
        a = cv2.cvtColor(a[:, :, :3], cv2.COLOR_RGB2GRAY)
    if a.ndim != 2 or min(a.shape) < 1:
        raise FerError(f"not an image array (shape {a.shape})")
    return a


def _load_folders(root: Path) -> FerData:
    roles: dict[str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        role = _FOLDER_ROLES.get(sub.name.lower())
        if role and role not in roles:
            roles[role] = sub
    if "train" not in roles:
        raise FerError(f"{root}: no train/ folder")
    splits: dict[str, tuple] = {}
    for role, folder in roles.items():
        xs, ys = [], []
        for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            label = _CLASS_ALIASES.get(cls_dir.name.lower())
            if label is None:
                raise FerError(f"{cls_dir}: folder name is not an emotion (use one of {', '.join(EMOTIONS)} or 0-6)")
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() in _IMAGE_SUFFIXES:
                    xs.append(_read_image(f))
                    ys.append(label)
        if not xs:
            raise FerError(f"{folder}: empty split (no images in any {folder.name}/<emotion>/ folder)")
        splits[role] = (np.stack(xs), np.asarray(ys, np.int64))
    notes, shared = [], False
    if "test" in splits:
        if "public" in splits and "private" in splits:
            notes.append("test/ ignored: val/ and private/ folders give both test splits")
        elif "public" in splits:
            splits["private"] = splits.pop("test")
        elif "private" in splits:
            splits["public"] = splits.pop("test")
        else:
            t = splits.pop("test")
            splits["public"] = splits["private"] = t
            shared = True
            notes.append("one test folder: used as both public and private split")
        splits.pop("test", None)
    for a, b in (("public", "private"), ("private", "public")):
        if a not in splits:
            if b not in splits:
                raise FerError(f"{root}: no test/ (or val/) folder next to train/")
            splits[a] = splits[b]
            shared = True
            notes.append(f"no {a} folder: the {b} split is used for both roles")
    return _finish("image-folders", root, splits, notes, shared)


_LOADERS = {
    "webp-npz": _load_webp_npz,
    "kaggle-csv": _load_kaggle_csv,
    "icml-csv": _load_icml_csv,
    "torchvision-csv": _load_torchvision,
    "image-folders": _load_folders,
}


# --------------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where parsed arrays are kept: ``$FER_CACHE``, else ``~/.cache/fer-lab``."""
    return Path(os.environ.get("FER_CACHE") or Path.home() / ".cache" / "fer-lab")


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
    data = _LOADERS[kind](path)
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


def _check_arrays(path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise FerError(f"{path}: {split}_x has shape {x.shape}, expected (N, 48, 48)")
    if len(x) != len(y):
        raise FerError(f"{path}: {split}_x has {len(x)} images but {split}_y has {len(y)} labels")
    if len(y) == 0:
        raise FerError(f"{path}: the {split} split is empty")
    bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
    if bad.size:
        raise FerError(f"{path}: {split} image {bad[0]} has label {y[bad[0]]}, outside 0-6")
    if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
        raise FerError(f"{path}: {split}_x values outside 0-255")


def _validate(data: FerData) -> None:
    for s in SPLITS:
        _check_arrays(data.path, s, *data.split(s))
