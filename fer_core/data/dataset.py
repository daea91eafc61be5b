"""``FerData``: three labelled splits of 48x48 uint8 faces, what they came from, and their checks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_core.common import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, FerError

SPLITS = ("train", "public", "private")


#: The canonical FER2013 split sizes; a source with exactly these is called "fer2013".
FER2013_SIZES = {"train": 28709, "public": 3589, "private": 3589}


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


def check_arrays(path, split: str, x: np.ndarray, y: np.ndarray) -> None:
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


def validate(data: FerData) -> None:
    for s in SPLITS:
        check_arrays(data.path, s, *data.split(s))
