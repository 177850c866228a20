"""Image folders: class trees, flat folders, splits, corrupt files, streaming, 16-bit images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semmae.config import DataConfig
from semmae.data import build_dataset, iterate_batches
from semmae.data import folder as folder_mod
from semmae.errors import DataError

pytestmark = pytest.mark.usefixtures("single_thread")


def _save(path: Path, value: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]) + ((3,) if mode == "RGB" else ()), value, dtype=np.uint8)
    arr[0, 0] = 255 - value  # a marker pixel: orientation and exact decoding are checked
    Image.fromarray(arr, mode).save(path, **({"lossless": True} if path.suffix == ".webp" else {}))


def _cfg(root: Path, **kw) -> DataConfig:
    kw.setdefault("crop_pct", 1.0)  # the evaluation view of an 8x8 file is then the file itself
    return DataConfig(name="image_folder", root=str(root), image_size=8, in_chans=1, **kw)


def _all(ds) -> torch.Tensor:
    return ds.load(torch.arange(len(ds)))


def test_class_tree_with_hash_split(tmp_path: Path) -> None:
    exts = [".png", ".PNG", ".bmp", ".tif", ".webp"]
    for i in range(60):
        _save(tmp_path / "cat" / f"c{i:03d}{exts[i % 5]}", 40)
        _save(tmp_path / "dog" / "sub" / f"d{i:03d}{exts[i % 5]}", 200)  # nested files count too
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    _save(tmp_path / ".hidden" / "x.png", 0)
    train = build_dataset(_cfg(tmp_path), "train")
    test = build_dataset(_cfg(tmp_path), "test")
    assert train.classes == test.classes == ["cat", "dog"]
    assert len(train) + len(test) == 120
    expected_test = sum(
        folder_mod.in_test_split(f"{c}/{p}{i:03d}{exts[i % 5]}")
        for c, p in (("cat", "c"), ("dog", "sub/d"))
        for i in range(60)
    )
    assert len(test) == expected_test and 3 <= expected_test <= 25  # about 10%
    for ds in (train, test):
        images = _all(ds)
        assert ds.streamed and images.shape[1:] == (1, 8, 8)
        value = images[:, 0, 4, 4].long()
        assert torch.equal(ds.targets, (value == 200).long())  # label follows the folder
        assert bool((images[:, 0, 0, 0].long() == 255 - value).all())  # marker pixel intact
    assert build_dataset(_cfg(tmp_path), "test").fingerprint() == test.fingerprint()


def test_explicit_train_and_val_folders(tmp_path: Path) -> None:
    for i in range(5):
        _save(tmp_path / "train" / "a" / f"{i}.png", 10)
        _save(tmp_path / "train" / "b" / f"{i}.png", 20)
    for i in range(3):
        _save(tmp_path / "val" / "b" / f"{i}.jpg", 20)
    train = build_dataset(_cfg(tmp_path), "train")
    test = build_dataset(_cfg(tmp_path), "test")
    assert len(train) == 10 and train.classes == ["a", "b"] and train.targets.tolist() == [0] * 5 + [1] * 5
    assert len(test) == 3 and test.classes == ["a", "b"] and test.targets.tolist() == [1] * 3  # train's map
    assert len(build_dataset(_cfg(tmp_path, limit=4), "train")) == 4


def test_flat_folder_unlabelled_and_resized(tmp_path: Path) -> None:
    for i in range(40):
        _save(tmp_path / f"img{i:02d}.JPEG", 100, size=(24, 16), mode="RGB")
    ds = build_dataset(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, in_chans=3), "train")
    assert ds.classes == [] and bool((ds.targets == -1).all())
    images = _all(ds)
    assert images.shape[1:] == (3, 8, 8)
    assert abs(int(images[0, 0, 4, 4]) - 100) <= 3  # JPEG is lossy


def test_corrupt_files_warn_or_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(4):
        _save(tmp_path / "train" / "a" / f"{i}.png", 50)
    _save(tmp_path / "test" / "a" / "0.png", 50)
    bad = tmp_path / "train" / "a" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with caplog.at_level(logging.WARNING, logger="semmae.data.folder"):
        ds = build_dataset(_cfg(tmp_path), "train")
    assert len(ds) == 4
    assert str(bad) in caplog.text and "skipped 1 unreadable image(s)" in caplog.text
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path, on_corrupt="error"), "train")
    assert str(bad) in str(err.value) and "under data.on_corrupt=warn the file is skipped" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path / "nope"), "train")
    assert str(tmp_path / "nope") in str(err.value) and "png" in str(err.value) and "webp" in str(err.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="jpeg"):
        build_dataset(_cfg(tmp_path / "empty"), "train")
    with pytest.raises(DataError, match="data.root"):
        build_dataset(DataConfig(name="image_folder"), "train")
    with pytest.raises(DataError, match="readme.md is a file; set data.root to the folder"):
        build_dataset(_cfg(tmp_path / "empty" / "readme.md"), "train")


def test_streamed_batches_and_fingerprint(tmp_path: Path, caplog) -> None:
    for i in range(12):
        _save(tmp_path / "train" / ("a" if i % 2 else "b") / f"{i:02d}.png", 10 * i)
    _save(tmp_path / "test" / "a" / "0.png", 1)
    (tmp_path / "train" / "a" / "zz_bad.png").write_bytes(b"garbage")  # fails the header check
    streamed = build_dataset(_cfg(tmp_path), "train")
    assert streamed.streamed and streamed.images is None and len(streamed) == 12
    assert streamed.image_size == 8 and streamed.in_chans == 1
    everything = _all(streamed)
    assert sorted(everything[:, 0, 4, 4].tolist()) == [10 * i for i in range(12)]
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(streamed.load(order[:5]), everything[order[:5]])
    for workers in (0, 1):
        got = list(iterate_batches(streamed, order, 5, num_workers=workers))
        assert [len(b[2]) for b in got] == [5, 5, 2]
        assert torch.equal(torch.cat([b[0] for b in got]), everything[order])
        assert torch.equal(torch.cat([b[1] for b in got]), streamed.targets[order])
        assert torch.equal(torch.cat([b[2] for b in got]), order)
    fp = streamed.fingerprint()
    assert len(fp) == 16 and build_dataset(_cfg(tmp_path), "train").fingerprint() == fp
    _save(tmp_path / "train" / "a" / "01.png", 77, size=(9, 9))  # same name, other content and size
    assert build_dataset(_cfg(tmp_path), "train").fingerprint() != fp


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    cfg = DataConfig(name="image_folder", root=str(tmp_path), image_size=64, in_chans=1, crop_pct=1.0)
    got = _all(
        build_dataset(cfg, "train")
        if not folder_mod.in_test_split("deep.png")
        else build_dataset(cfg, "test")
    )
    expected = torch.from_numpy(np.rint(ramp / 257.0).astype(np.uint8))
    assert torch.equal(got[0, 0], expected)  # PIL's own convert("L") makes 99.6% of these 255
    assert float((got == 255).float().mean()) < 0.01


def test_streamed_file_that_breaks_after_the_header_check(tmp_path: Path, caplog) -> None:
    for i in range(3):
        _save(tmp_path / "train" / "a" / f"{i}.png", 90, size=(32, 32))
    _save(tmp_path / "test" / "a" / "0.png", 1)
    good = (tmp_path / "train" / "a" / "1.png").read_bytes()
    (tmp_path / "train" / "a" / "1.png").write_bytes(good[: len(good) // 2])  # header intact, data cut
    ds = build_dataset(_cfg(tmp_path), "train")
    assert len(ds) == 3  # the header check passes
    with caplog.at_level(logging.WARNING, logger="semmae.data.folder"):
        images = ds.load([0, 1, 2])
    assert bool((images[1] == 0).all()) and bool((images[0] == 90).any()) and "1.png" in caplog.text
    strict = build_dataset(_cfg(tmp_path, on_corrupt="error"), "train")
    with pytest.raises(DataError, match="under data.on_corrupt=warn a black image stands in for it"):
        strict.load([1])


def test_floating_point_images_are_refused_not_read_as_black(tmp_path: Path) -> None:
    for i in range(4):
        _save(tmp_path / "train" / "a" / f"{i}.png", 90)
        _save(tmp_path / "test" / "a" / f"{i}.png", 90)
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, "F").save(tmp_path / "train" / "a" / "float.tif")
    assert Image.open(tmp_path / "train" / "a" / "float.tif").mode == "F"
    for on_corrupt in ("warn", "error"):
        with pytest.raises(DataError, match=r"float\.tif holds floating-point pixels; convert it"):
            build_dataset(_cfg(tmp_path, on_corrupt=on_corrupt), "train")


def test_a_pixel_type_refused_at_read_time_is_raised_even_under_warn(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a" / "0.png", 90)
    _save(tmp_path / "test" / "a" / "0.png", 90)
    wide = np.full((8, 8), 70000, dtype=np.int32)  # 32-bit integers past 16 bits
    Image.fromarray(wide, "I").save(tmp_path / "train" / "a" / "wide.tif")
    ds = build_dataset(_cfg(tmp_path), "train")  # the header says "I": its values show on reading
    with pytest.raises(DataError, match=r"wide\.tif holds 32-bit integer pixels"):
        _all(ds)


def _two_splits(root: Path, train: dict[str, int], test: dict[str, int]) -> None:
    """``root/{train,test}/<class>/`` with ``n`` images of one grey value per class (0 = empty folder)."""
    for split, counts in (("train", train), ("test", test)):
        for c, n in counts.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _save(root / split / c / f"{i}.png", (10 + 40 * (ord(c) - ord("a"))) % 250)


def _labels_by_value(ds) -> dict[int, int]:
    """Grey value of each image -> its target (a value is a class, so each maps to one target)."""
    pairs = set(zip(_all(ds)[:, 0, 4, 4].tolist(), ds.targets.tolist(), strict=True))
    assert len({v for v, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


def test_one_class_map_for_both_splits(tmp_path: Path) -> None:
    # test lacks "a" and holds an empty "c" and an empty "x"; train's empty "b" is no class
    _two_splits(tmp_path, {"a": 2, "b": 0, "c": 3, "d": 2}, {"c": 2, "d": 3, "x": 0})
    train, test = build_dataset(_cfg(tmp_path), "train"), build_dataset(_cfg(tmp_path), "test")
    assert train.classes == test.classes == ["a", "c", "d"]
    by_value = _labels_by_value(train)
    assert _labels_by_value(test) == {v: by_value[v] for v in (90, 130)}  # c, d keep train's index
    assert test.targets.tolist() == [1, 1, 2, 2, 2]


def test_a_class_train_has_no_images_of_is_refused(tmp_path: Path) -> None:
    _two_splits(tmp_path, {"a": 2, "b": 0, "c": 2}, {"a": 1, "b": 1, "z": 1})
    assert build_dataset(_cfg(tmp_path), "train").classes == ["a", "c"]
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(tmp_path), "test")
    msg = str(err.value)
    assert "\n" not in msg and "class folder(s) b, z in " in msg and "add their training images" in msg


def test_a_train_split_without_classes_leaves_the_test_classes_its_own(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "train" / f"{i}.png", 10)
    _two_splits(tmp_path, {}, {"b": 1, "c": 2})
    assert build_dataset(_cfg(tmp_path), "train").classes == []
    test = build_dataset(_cfg(tmp_path), "test")
    assert test.classes == ["b", "c"] and test.targets.tolist() == [0, 1, 1]
