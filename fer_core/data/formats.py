"""Readers for each form FER2013 comes in (npz, WebP npz, Kaggle and ICML CSV, torchvision's CSVs, image
folders). Each returns a :class:`~fer_core.data.dataset.FerData`; bad input raises a ``FerError`` naming the
file and the row or image."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fer_core.common import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, FerError
from fer_core.data.dataset import FER2013_SIZES, SPLITS, FerData, check_arrays
from fer_core.data.images import IMAGE_SUFFIXES, read_image

_USAGE = {"training": "train", "publictest": "public", "privatetest": "private"}


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


def find_in_dir(d: Path) -> Path | None:
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


def kind_of(path: Path) -> str:
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


def _finish(kind: str, path: Path, splits: dict, notes: list[str], shared: bool) -> FerData:
    sizes = {s: len(splits[s][1]) for s in SPLITS}
    canonical = sizes == FER2013_SIZES or (
        shared and sizes["train"] == FER2013_SIZES["train"] and sizes["public"] in (3589, 7178)
    )
    return FerData.from_splits("fer2013" if canonical else "custom", kind, str(path), splits, notes, shared)


def load_npz(path: Path) -> FerData:
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
        check_arrays(path, s, x, y)
        splits[s] = (x.astype(np.uint8, copy=False), y.astype(np.int64, copy=False))
    notes = [f"{recon} images were reconstructed (see the dataset README)"] if recon else []
    return _finish("npz", path, splits, notes, shared=False)


def _load_webp_npz(path: Path) -> FerData:
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
            check_arrays(path, s, *splits[s])
    return _finish("webp-npz", path, splits, [], shared=False)


def _read_csv(path: Path, required: set[str]):
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
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    xs.append(read_image(f))
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


LOADERS = {
    "webp-npz": _load_webp_npz,
    "kaggle-csv": _load_kaggle_csv,
    "icml-csv": _load_icml_csv,
    "torchvision-csv": _load_torchvision,
    "image-folders": _load_folders,
}
