"""ImageSet, build_dataset, iterate_batches; Fashion-MNIST resolution; torchvision-format sets."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from semmae.config import DataConfig
from semmae.data import ImageSet, build_dataset, fashion_mnist, iterate_batches, torchvision_sets
from semmae.data import cache as cache_mod
from semmae.data.imageset import fit_images
from semmae.errors import DataError

pytestmark = pytest.mark.usefixtures("single_thread")

FMNIST_FILES = [fashion_mnist.DEBIAN_DIR / f"{n}.gz" for n in fashion_mnist.FILES]


def _offline(monkeypatch: pytest.MonkeyPatch, *modules) -> None:
    for mod in modules:
        monkeypatch.setattr(mod, "network_available", lambda *a, **k: False)


# ---------------------------------------------------------------- Fashion-MNIST


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 + array.ndim  # type 0x08 = uint8
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write_fake_fmnist(
    folder: Path, n_train: int = 6, n_test: int = 3, gz: bool = True
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.skipif(
    not all(p.is_file() for p in FMNIST_FILES),
    reason=f"Fashion-MNIST package files not installed in {fashion_mnist.DEBIAN_DIR} (dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, fashion_mnist)
    train = build_dataset(DataConfig(), "train")
    assert len(train) == 60000 and train.images.shape == (60000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert train.images.float().mean().div(255).item() == pytest.approx(0.2860, abs=1e-3)  # known mean
    test = build_dataset(DataConfig(limit=500, image_size=32, in_chans=3), "test")
    assert test.images.shape == (500, 3, 32, 32)
    assert torch.equal(test.images[:, 0], test.images[:, 2])  # grey repeated into RGB
    fp = train.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert build_dataset(DataConfig(), "train").fingerprint() == fp  # second build: unpacked copy reused
    assert build_dataset(DataConfig(), "test").fingerprint() != fp


def test_fashion_mnist_gz_folder_is_unpacked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, fashion_mnist)
    monkeypatch.setenv("SEMMAE_CACHE", str(tmp_path / "cache"))
    arrays = _write_fake_fmnist(tmp_path / "src")
    ds = build_dataset(DataConfig(root=str(tmp_path / "src")), "train")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert ds.targets.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    unpacked = list((tmp_path / "cache" / "fashion_mnist").glob("*/FashionMNIST/raw/*"))
    assert sorted(p.name for p in unpacked) == sorted(fashion_mnist.FILES)
    stamps = {p: p.stat().st_mtime_ns for p in unpacked}
    test = build_dataset(DataConfig(root=str(tmp_path / "src"), limit=2), "test")
    assert len(test) == 2
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:2]))
    assert {p: p.stat().st_mtime_ns for p in unpacked} == stamps  # not unpacked again


def test_fashion_mnist_env_var_torchvision_layout_read_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch, fashion_mnist)
    monkeypatch.setenv("SEMMAE_CACHE", str(tmp_path / "cache"))
    arrays = _write_fake_fmnist(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    monkeypatch.setenv("SEMMAE_FASHION_MNIST", str(tmp_path / "tv"))
    assert fashion_mnist.resolve_root(None) == tmp_path / "tv"
    ds = build_dataset(DataConfig(), "test")
    assert ds.targets.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("gz", [True, False])
def test_an_empty_fashion_mnist_file_is_named_before_any_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool
) -> None:
    _offline(monkeypatch, fashion_mnist)
    monkeypatch.setenv("SEMMAE_CACHE", str(tmp_path / "cache"))
    _write_fake_fmnist(tmp_path / "src", gz=gz)
    empty = tmp_path / "src" / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"Fashion-MNIST file {empty} is empty; replace it"):
        build_dataset(DataConfig(root=str(tmp_path / "src")), "train")
    assert not (tmp_path / "cache").exists()  # nothing unpacked from it


def test_an_empty_raw_fashion_mnist_file_gives_way_to_its_gz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interrupted unpacking leaves an empty raw file beside the good .gz: the .gz is read.
    _offline(monkeypatch, fashion_mnist)
    monkeypatch.setenv("SEMMAE_CACHE", str(tmp_path / "cache"))
    arrays = _write_fake_fmnist(tmp_path / "src", gz=True)
    (tmp_path / "src" / "t10k-labels-idx1-ubyte").write_bytes(b"")
    found = fashion_mnist.find_files(tmp_path / "src")
    assert found is not None and found["t10k-labels-idx1-ubyte"].name == "t10k-labels-idx1-ubyte.gz"
    ds = build_dataset(DataConfig(root=str(tmp_path / "src")), "test")
    assert ds.targets.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, fashion_mnist)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(root=str(empty)), "train")
    msg = str(err.value)
    assert "\n" not in msg and str(empty) in msg
    assert msg.startswith(
        "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist`, "
        "set SEMMAE_FASHION_MNIST=DIR, or pass data.root=DIR"
    )
    # no explicit root and no package: the same advice
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "missing")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_dataset(DataConfig(), "test")


def test_network_probe_answers_quickly() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        assert cache_mod._probe.__wrapped__("127.0.0.1", port, 1.0)
    finally:
        server.close()
    start = time.perf_counter()
    assert not cache_mod._probe.__wrapped__("127.0.0.1", port, 1.0)  # closed port: refused at once
    assert time.perf_counter() - start < 1.6
    assert not cache_mod.network_available("127.0.0.1", port)  # SEMMAE_OFFLINE=1 in tests


# ---------------------------------------------------------------- CIFAR / STL-10 fixtures


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _write_cifar10(root: Path, per_batch: int = 4) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = _cifar_images(per_batch, i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        with (folder / name).open("wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": []}, f)
        out[name] = data
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)
    return out


def test_cifar10_from_real_format_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, torchvision_sets)
    raw = _write_cifar10(tmp_path)
    train = build_dataset(DataConfig(name="cifar10", root=str(tmp_path), in_chans=3, image_size=32), "train")
    assert len(train) == 20 and train.images.shape == (20, 3, 32, 32) and train.classes[1] == "automobile"
    # CIFAR rows are 1024 R, then G, then B values in raster order
    assert torch.equal(train.images[0], torch.from_numpy(raw["data_batch_1"][0].reshape(3, 32, 32)))
    assert torch.equal(train.images[4], torch.from_numpy(raw["data_batch_2"][0].reshape(3, 32, 32)))
    assert train.targets[:5].tolist() == [0, 1, 2, 3, 1]
    cfg = DataConfig(name="cifar10", root=str(tmp_path), in_chans=1, image_size=16, limit=3)
    test = build_dataset(cfg, "test")
    assert test.images.shape == (3, 1, 16, 16)
    rgb = torch.from_numpy(raw["test_batch"][:3].reshape(3, 3, 32, 32))
    assert torch.equal(test.images, fit_images(rgb, 16, 1))


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def test_a_cifar_pickle_that_asks_to_run_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch, torchvision_sets)
    _write_cifar10(tmp_path)
    with (tmp_path / "cifar-10-batches-py" / "data_batch_3").open("wb") as f:
        pickle.dump({"data": _RunsCode(), "labels": []}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"asks to import (posix|os|nt)\.system"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path), in_chans=3, image_size=32), "train")
    assert not (tmp_path / "PWNED").exists()


def test_cifar100_and_stl10_from_real_format_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, torchvision_sets)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 5), ("test", 2)):
        with (folder / name).open("wb") as f:
            batch = {"data": _cifar_images(n, n), "fine_labels": list(range(n)), "coarse_labels": [0] * n}
            pickle.dump(batch, f)
    with (folder / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}, f)
    c100 = build_dataset(DataConfig(name="cifar100", root=str(tmp_path), in_chans=3, image_size=32), "train")
    assert len(c100) == 5 and c100.targets.tolist() == [0, 1, 2, 3, 4] and len(c100.classes) == 100

    stl = tmp_path / "stl" / "stl10_binary"
    stl.mkdir(parents=True)
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)  # (N, C, y, x)
    (stl / "test_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())  # stored column-major
    (stl / "test_y.bin").write_bytes(bytes([3, 10]))  # 1-based labels
    cfg = DataConfig(name="stl10", root=str(tmp_path / "stl"), in_chans=3, image_size=96)
    ds = build_dataset(cfg, "test")
    assert torch.equal(ds.images, torch.from_numpy(images)) and ds.targets.tolist() == [2, 9]
    assert ds.classes[0] == "airplane"


def test_torchvision_set_missing_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, torchvision_sets)
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path), in_chans=3, image_size=32), "train")
    msg = str(err.value)
    assert "\n" not in msg and "cifar-10-batches-py" in msg and "cifar-10-python.tar.gz" in msg


# ---------------------------------------------------------------- ImageSet and batching


def _toy_set(n: int = 10) -> ImageSet:
    images = torch.arange(n * 2 * 2, dtype=torch.uint8).view(n, 1, 2, 2)
    return ImageSet("t", "train", ["a"], torch.arange(n), images)


def test_iterate_batches_in_memory() -> None:
    ds = _toy_set()
    order = torch.tensor([3, 1, 4, 0, 5, 9, 2])
    batches = list(iterate_batches(ds, order, 3))
    assert [len(b[2]) for b in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([b[2] for b in batches]), order)
    for images, targets, idx in batches:
        assert torch.equal(images, ds.images[idx]) and torch.equal(targets, idx)
    assert [len(b[2]) for b in iterate_batches(ds, order, 3, drop_last=True)] == [3, 3]
    assert torch.equal(ds.load([2, 7]), ds.images[[2, 7]])


def test_fingerprint_tracks_content_and_order() -> None:
    a, b = _toy_set(), _toy_set()
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    b.images[3, 0, 1, 1] += 1
    b._fingerprint = None
    assert b.fingerprint() != a.fingerprint()
    perm = torch.tensor([1, 0] + list(range(2, 10)))
    c = ImageSet("t", "train", ["a"], a.targets[perm], a.images[perm])
    assert c.fingerprint() != a.fingerprint()


def test_fit_images_channels_and_resize() -> None:
    grey = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert fit_images(grey, 8, 1) is grey
    rgb = fit_images(grey, 8, 3)
    assert rgb.shape == (2, 3, 8, 8) and torch.equal(rgb[:, 1], grey[:, 0])
    colour = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    colour[:, 0] = 255  # pure red -> luma 0.299
    assert int(fit_images(colour, 4, 1).float().mean()) in (75, 76)
    # non-square: shorter side to S, centre crop; a constant band stays where it was
    wide = torch.zeros(1, 1, 10, 30, dtype=torch.uint8)
    wide[..., 8:22] = 200  # the centre crop's columns 10..19 plus the 2x filter's reach
    out = fit_images(wide, 5, 1)
    assert out.shape == (1, 1, 5, 5) and bool((out == 200).all())
    wide[..., 8:10] = 0  # now the crop's left edge sees the dark part: proves where the crop sits
    assert int(fit_images(wide, 5, 1)[0, 0, 2, 0]) < 200 and int(fit_images(wide, 5, 1)[0, 0, 2, 4]) == 200


def test_unknown_split_and_dataset() -> None:
    with pytest.raises(DataError, match="split"):
        build_dataset(DataConfig(name="toy_parts", toy_size=4), "val")
    cfg = DataConfig()
    cfg.name = "mnist"
    with pytest.raises(DataError, match="data.name"):
        build_dataset(cfg, "train")
