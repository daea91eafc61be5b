"""Every loader on small files the test writes, each broken case, the cache, and the synthetic faces."""

import os

import numpy as np
import pytest
from PIL import Image

from fer_core import EMOTIONS
from fer_core.common import FerError
from fer_core.data.sources import load, make_synthetic, resolve_spec

RNG = np.random.default_rng(0)


def _pixels(n):
    return RNG.integers(0, 256, (n, 48, 48), dtype=np.uint8)


def write_kaggle_csv(path, rows, header=("emotion", "pixels", "Usage"), sep=","):
    with open(path, "w", newline="") as f:
        f.write(sep.join(header) + "\n")
        for r in rows:
            f.write(sep.join(str(v) for v in r) + "\n")
    return path


def kaggle_rows(counts=None):
    counts = counts or {"Training": 14, "PublicTest": 7, "PrivateTest": 7}
    rows, images = [], []
    for usage, n in counts.items():
        for i, img in enumerate(_pixels(n)):
            rows.append((i % 7, " ".join(map(str, img.ravel())), usage))
            images.append(img)
    return rows, images


def test_kaggle_csv_loads_three_splits_in_order(tmp_path):
    rows, images = kaggle_rows()
    d = load(write_kaggle_csv(tmp_path / "fer2013.csv", rows))
    assert d.kind == "kaggle-csv" and d.name == "custom" and not d.synthetic and not d.shared_test
    assert [len(d.split(s)[1]) for s in ("train", "public", "private")] == [14, 7, 7]
    np.testing.assert_array_equal(d.train_x[3], images[3])
    np.testing.assert_array_equal(d.private_x[0], images[21])
    assert d.train_y.tolist()[:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert d.describe()["classes"] == list(EMOTIONS)


def test_icml_header_with_spaces(tmp_path):
    rows, _ = kaggle_rows()
    path = write_kaggle_csv(
        tmp_path / "icml_face_data.csv",
        [(r[0], r[2], r[1]) for r in rows],
        header=("emotion", " Usage", " pixels"),
        sep=", ",
    )
    d = load(path)
    assert d.kind == "icml-csv" and len(d.train_y) == 14


def test_csv_with_one_test_split_uses_it_for_both_and_says_so(tmp_path):
    rows, _ = kaggle_rows({"Training": 14, "PublicTest": 7})
    d = load(write_kaggle_csv(tmp_path / "fer2013.csv", rows))
    assert d.shared_test and any("both roles" in n for n in d.notes)
    np.testing.assert_array_equal(d.public_x, d.private_x)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda rows: rows.__setitem__(5, (3, "1 2 3", "Training")), r"line 7: pixels has 3 values, expected 2304"),
        (lambda rows: rows.__setitem__(2, (9, rows[2][1], "Training")), r"line 4: emotion '9' is not a label 0-6"),
        (lambda rows: rows.__setitem__(4, (1, rows[4][1].replace(" ", " x ", 1)[:-2], "Training")), r"line 6"),
        (lambda rows: rows.__setitem__(3, (1, rows[3][1], "Validation")), r"line 5: Usage 'Validation'"),
        (lambda rows: rows.__setitem__(1, (1, "300 " * 2303 + "1", "Training")), r"line 3: pixel value '300'"),
    ],
)
def test_broken_csv_rows_are_named(tmp_path, mutate, message):
    rows, _ = kaggle_rows()
    mutate(rows)
    path = write_kaggle_csv(tmp_path / "fer2013.csv", rows)
    with pytest.raises(FerError, match=message) as e:
        load(path)
    assert "fer2013.csv" in str(e.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing written


def test_csv_with_wrong_columns_or_no_rows(tmp_path):
    bad = tmp_path / "fer2013.csv"
    bad.write_text("label,image\n1,2\n")
    with pytest.raises(FerError, match="missing column"):
        load(bad)
    bad.write_text("emotion,pixels,Usage\n")
    with pytest.raises(FerError, match="no rows"):
        load(bad)


def test_csv_without_training_rows_is_an_empty_split(tmp_path):
    rows, _ = kaggle_rows({"PublicTest": 7, "PrivateTest": 7})
    with pytest.raises(FerError, match="no Training rows"):
        load(write_kaggle_csv(tmp_path / "fer2013.csv", rows))


def test_torchvision_layout_with_labelled_and_unlabelled_test(tmp_path):
    root = tmp_path / "fer2013"
    root.mkdir()
    rows, _ = kaggle_rows({"Training": 20})
    write_kaggle_csv(root / "train.csv", [r[:2] for r in rows], header=("emotion", "pixels"))
    write_kaggle_csv(root / "test.csv", [r[:2] for r in rows[:6]], header=("emotion", "pixels"))
    d = load(tmp_path)  # the parent folder is found too
    assert d.kind == "torchvision-csv" and d.shared_test and len(d.train_y) == 20 and len(d.public_y) == 6
    write_kaggle_csv(root / "test.csv", [(r[1],) for r in rows[:6]], header=("pixels",))
    d = load(root, cache=False)
    assert len(d.train_y) == 18 and len(d.public_y) == 2 and any("no emotion column" in n for n in d.notes)


def _write_images(root, split, per_class, size=(64, 64), mode="L", ext="png"):
    for name in EMOTIONS:
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            arr = RNG.integers(0, 256, (*size[::-1], 3) if mode == "RGB" else size[::-1], dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / split / name / f"{i}.{ext}")


def test_image_folders_any_size_and_colour(tmp_path):
    _write_images(tmp_path, "train", 2, size=(96, 80), mode="RGB", ext="jpg")
    _write_images(tmp_path, "test", 1)
    d = load(tmp_path)
    assert d.kind == "image-folders" and d.train_x.shape == (14, 48, 48) and d.train_x.dtype == np.uint8
    assert d.shared_test and d.counts()["public"] == [1] * 7


def test_image_folders_with_val_and_test_give_public_and_private(tmp_path):
    _write_images(tmp_path, "train", 1)
    _write_images(tmp_path, "val", 1)
    _write_images(tmp_path, "test", 2)
    d = load(tmp_path)
    assert not d.shared_test and len(d.public_y) == 7 and len(d.private_y) == 14


def test_unreadable_image_and_unknown_class_folder_are_named(tmp_path):
    _write_images(tmp_path, "train", 1)
    _write_images(tmp_path, "test", 1)
    (tmp_path / "train" / "happy" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(FerError, match=r"broken\.png: unreadable image"):
        load(tmp_path)
    (tmp_path / "train" / "happy" / "broken.png").unlink()
    (tmp_path / "train" / "contempt").mkdir()
    with pytest.raises(FerError, match="contempt: folder name is not an emotion"):
        load(tmp_path)


def test_empty_image_split(tmp_path):
    _write_images(tmp_path, "train", 1)
    (tmp_path / "test" / "happy").mkdir(parents=True)
    with pytest.raises(FerError, match="empty split"):
        load(tmp_path)


def test_npz_arrays_and_their_errors(tmp_path):
    arrays = {
        f"{s}_{k}": v
        for s, n in [("train", 10), ("public", 4), ("private", 4)]
        for k, v in [("x", _pixels(n)), ("y", np.arange(n) % 7)]
    }
    np.savez(tmp_path / "fer2013.npz", **arrays)
    d = load(tmp_path / "fer2013.npz")
    assert d.kind == "npz" and len(d.private_y) == 4
    arrays["public_y"] = np.array([0, 1, 2, 7])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(FerError, match="public image 3 has label 7"):
        load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK nonsense")
    with pytest.raises(FerError, match="not a readable .npz"):
        load(tmp_path / "junk.npz")


def test_cache_is_reused_and_invalidated_when_the_source_changes(tmp_path, monkeypatch):
    rows, _ = kaggle_rows()
    path = write_kaggle_csv(tmp_path / "fer2013.csv", rows)
    first = load(path)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    import fer_core.data.formats as formats_mod

    def exploding(_):
        raise AssertionError("parsed again although the cache was fresh")

    monkeypatch.setitem(formats_mod.LOADERS, "kaggle-csv", exploding)
    again = load(path)
    assert again.fingerprint == first.fingerprint
    monkeypatch.undo()
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))
    rows[0] = (6, rows[0][1], rows[0][2])
    write_kaggle_csv(path, rows)
    os.utime(path, ns=(1, 1))
    changed = load(path)
    assert changed.train_y[0] == 6 and changed.fingerprint != first.fingerprint


def test_where_data_is_found(tmp_path, monkeypatch, no_fer_data):
    assert resolve_spec("x.csv") == "x.csv"
    import fer_core.data.sources as data_mod

    monkeypatch.setattr(data_mod, "repo_data_dir", lambda: tmp_path / "nothing-here")
    assert resolve_spec(None) == "synthetic"
    monkeypatch.setenv("FER_DATA", str(tmp_path / "missing.npz"))
    with pytest.raises(FerError, match="FER_DATA points at .*missing.npz, which does not exist"):
        resolve_spec(None)
    with pytest.raises(FerError, match="does not exist"):
        load(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerError, match="no FER2013 found in folder"):
        load(tmp_path / "empty")


def test_synthetic_faces_are_deterministic_balanced_and_labelled():
    a, b, c = make_synthetic(700, seed=1), make_synthetic(700, seed=1), make_synthetic(700, seed=2)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.name == "synthetic" and a.synthetic and a.describe()["synthetic"]
    assert a.counts()["train"] == [100] * 7
    assert a.train_x.dtype == np.uint8 and a.train_x.shape == (700, 48, 48)
    assert a.train_x.std() > 20  # faces, not blank images


def test_synthetic_is_the_default_when_nothing_is_found(tmp_path, monkeypatch, no_fer_data):
    import fer_core.data.sources as data_mod

    monkeypatch.setattr(data_mod, "repo_data_dir", lambda: tmp_path / "nothing-here")
    d = load()
    assert d.name == "synthetic" and "not FER2013" in d.notes[0]


def test_limit_keeps_the_first_images():
    d = make_synthetic(700)
    small = d.limit_train(100)
    assert len(small.train_y) == 100 and np.array_equal(small.train_x, d.train_x[:100])
    assert small.private_x is d.private_x
    with pytest.raises(FerError):
        d.limit_train(-3)
