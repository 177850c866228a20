"""Part-map files: round trips, sharded writing, and every refusal of a mismatched file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from semmae import runtime
from semmae.data import oracle
from semmae.data import partmaps as pm
from semmae.data.oracle import part_maps_from_masks
from semmae.data.partmap_writer import PartMapWriter, write_part_maps
from semmae.data.partmaps import load_part_maps, manifest_path
from semmae.errors import DataError

N, H, W, K = 10, 7, 7, 4


@dataclass
class FakeImageSet:
    """The part of the ImageSet API that part-map files care about."""

    name: str = "toy_parts"
    split: str = "train"
    n: int = N
    image_size: int = 28
    fp: str = "f00dcafe"
    part_masks: torch.Tensor | None = None
    num_gt_parts: int | None = None

    def __len__(self) -> int:
        return self.n

    def fingerprint(self) -> str:
        return self.fp


def _labels(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, K, size=(n, H, W), dtype=np.uint8)


def _write(path: Path, labels: np.ndarray | torch.Tensor | None = None, **over: object) -> pm.PartMapManifest:
    ds = FakeImageSet()
    kw: dict = dict(dataset=ds.name, split=ds.split, image_size=ds.image_size, num_parts=K, fingerprint=ds.fp,
                    learner_hash="abc", source="learner")  # fmt: skip
    kw.update(over)
    return write_part_maps(path, _labels() if labels is None else labels, **kw)


def _edit_manifest(path: Path, **changes: object) -> None:
    mp = manifest_path(path)
    d = json.loads(mp.read_text())
    d.update(changes)
    mp.write_text(json.dumps(d))


# ---------------------------------------------------------------- round trips


def test_round_trip(tmp_path: Path) -> None:
    labels = _labels(1)
    written = _write(tmp_path / "maps.npy", torch.from_numpy(labels).long())
    maps = load_part_maps(tmp_path / "maps.npy", dataset=FakeImageSet())
    assert isinstance(maps.labels, np.memmap) and maps.labels.dtype == np.uint8
    np.testing.assert_array_equal(maps.labels, labels)
    m = maps.manifest
    assert m == written
    assert (m.format_version, m.dataset, m.split, m.num_images) == (2, "toy_parts", "train", N)
    assert (
        m.view == "whole" and json.loads(manifest_path(tmp_path / "maps.npy").read_text())["view"] == "whole"
    )
    assert (m.image_size, m.grid, m.num_parts, m.fingerprint) == (28, (H, W), K, "f00dcafe")
    assert (m.learner_hash, m.source) == ("abc", "learner")
    assert dt.datetime.fromisoformat(m.created).tzinfo is not None
    on_disk = json.loads(manifest_path(tmp_path / "maps.npy").read_text())
    assert on_disk["grid"] == [H, W] and on_disk["num_images"] == N
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.json", "maps.npy"]  # no temp files left


def test_suffix_is_added_and_overwrite_replaces(tmp_path: Path) -> None:
    _write(tmp_path / "maps")
    assert (tmp_path / "maps.npy").is_file() and (tmp_path / "maps.json").is_file()
    new = _labels(7)
    _write(tmp_path / "maps", new)
    np.testing.assert_array_equal(load_part_maps(tmp_path / "maps").labels, new)


def test_the_manifest_name_stands_for_its_pair_and_another_file_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "maps.json")  # the manifest's name given as --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.json", "maps.npy"]
    np.testing.assert_array_equal(
        load_part_maps(tmp_path / "maps.json").labels, load_part_maps(tmp_path / "maps").labels
    )
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt is not a part-map file; give the .npy"):
        load_part_maps(tmp_path / "notes.txt")


def test_lookup_returns_the_right_rows(tmp_path: Path) -> None:
    labels = _labels(2)
    _write(tmp_path / "maps.npy", labels)
    maps = load_part_maps(tmp_path / "maps.npy")
    idx = torch.tensor([7, 0, 7, 3])
    got = maps.lookup(idx)
    assert got.dtype == torch.uint8 and got.shape == (4, H, W)
    np.testing.assert_array_equal(got.numpy(), labels[[7, 0, 7, 3]])
    assert len(maps) == N and maps.manifest.grid == (H, W) and maps.manifest.num_parts == K


def test_writer_with_two_shards_matches_write_part_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = _labels(4)
    _write(tmp_path / "whole.npy", labels)
    meta = dict(num_images=N, grid=(H, W), dataset="toy_parts", split="train", image_size=28, num_parts=K,
                fingerprint="f00dcafe", learner_hash="abc")  # fmt: skip
    monkeypatch.setenv("RANK", "0")
    w0 = PartMapWriter.create(tmp_path / "sharded.npy", **meta)
    assert not (tmp_path / "sharded.npy").exists()  # filled under a temporary name
    made = w0.array.filename
    monkeypatch.setattr(runtime, "broadcast_object", lambda obj: made)  # rank 0 tells the others
    monkeypatch.setenv("RANK", "1")
    w1 = PartMapWriter.create(tmp_path / "sharded.npy", **meta)  # opens the file rank 0 made
    for rank, writer in ((1, w1), (0, w0)):
        for batch in torch.arange(rank, N, 2).split(3):  # rank r owns images r, r+2, ...
            writer.write(batch, torch.from_numpy(labels[batch.numpy()]))
    w1.close()
    assert not manifest_path(tmp_path / "sharded.npy").exists()  # only rank 0 writes it
    monkeypatch.setenv("RANK", "0")
    m = w0.close()
    assert (tmp_path / "sharded.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    whole = load_part_maps(tmp_path / "whole.npy").manifest
    assert dataclasses.replace(m, created="") == dataclasses.replace(whole, created="")
    sharded = load_part_maps(tmp_path / "sharded.npy", dataset=FakeImageSet())
    np.testing.assert_array_equal(sharded.labels, labels)


def test_an_unfinished_writer_shows_nothing_at_its_path(tmp_path: Path) -> None:
    w = PartMapWriter.create(
        tmp_path / "maps.npy", num_images=N, grid=(H, W), dataset="toy_parts", split="train",
        image_size=28, num_parts=K, fingerprint="f00dcafe",
    )  # fmt: skip
    w.write(torch.tensor([0]), torch.zeros(1, H, W, dtype=torch.long))
    with pytest.raises(DataError, match="does not exist"):
        load_part_maps(tmp_path / "maps.npy")
    with pytest.raises(DataError, match=r"\[0, 3\]"):
        w.write(torch.tensor([1]), torch.full((1, H, W), K))
    w.close()
    load_part_maps(tmp_path / "maps.npy")


def test_writing_bad_labels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\[0, 3\]"):
        _write(tmp_path / "maps.npy", np.full((2, H, W), K))
    with pytest.raises(DataError, match="dimensions"):
        _write(tmp_path / "maps.npy", np.zeros((2, H * W), dtype=np.uint8))
    with pytest.raises(DataError, match="num_parts"):
        _write(tmp_path / "maps.npy", np.zeros((2, H, W), dtype=np.uint8), num_parts=300)


# ---------------------------------------------------------------- refusals against the dataset


@pytest.mark.parametrize(
    "field,change,file_value,ds_value",
    [
        ("dataset", dict(name="fashion_mnist"), "toy_parts", "fashion_mnist"),
        ("split", dict(split="test"), "train", "test"),
        ("num_images", dict(n=N + 5), str(N), str(N + 5)),
        ("image_size", dict(image_size=32), "28", "32"),
        ("fingerprint", dict(fp="0badbeef"), "f00dcafe", "0badbeef"),
    ],
)
def test_mismatch_with_dataset_is_refused(
    tmp_path: Path, field: str, change: dict, file_value: str, ds_value: str
) -> None:
    _write(tmp_path / "maps.npy")
    load_part_maps(tmp_path / "maps.npy", dataset=FakeImageSet())  # the matching set loads
    with pytest.raises(DataError) as err:
        load_part_maps(tmp_path / "maps.npy", dataset=FakeImageSet(**change))
    msg = str(err.value)
    assert "\n" not in msg and "maps.npy" in msg
    assert field in msg and file_value in msg and ds_value in msg


# ---------------------------------------------------------------- refusals of a broken file


def test_labels_not_below_num_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pm, "_CHECK_CHUNK", 7)  # the bad label sits in a late chunk
    labels = np.zeros((N, H, W), dtype=np.uint8)
    labels[-1, -1, -2] = 3
    _write(tmp_path / "maps.npy", labels)
    _edit_manifest(tmp_path / "maps.npy", num_parts=3)
    with pytest.raises(DataError, match="label 3 .*num_parts 3"):
        load_part_maps(tmp_path / "maps.npy")


def test_wrong_shape(tmp_path: Path) -> None:
    _write(tmp_path / "maps.npy")
    _edit_manifest(tmp_path / "maps.npy", grid=[14, 14])
    with pytest.raises(DataError, match="shape"):
        load_part_maps(tmp_path / "maps.npy")
    _edit_manifest(tmp_path / "maps.npy", grid=[H, W], num_images=N - 1)
    with pytest.raises(DataError, match="shape"):
        load_part_maps(tmp_path / "maps.npy")


def test_wrong_dtype(tmp_path: Path) -> None:
    _write(tmp_path / "maps.npy")
    np.save(tmp_path / "maps.npy", _labels().astype(np.int64))
    with pytest.raises(DataError, match="uint8"):
        load_part_maps(tmp_path / "maps.npy")


@pytest.mark.parametrize("keep_bytes", [20, 200])
def test_truncated_file(tmp_path: Path, keep_bytes: int) -> None:
    _write(tmp_path / "maps.npy")
    data = (tmp_path / "maps.npy").read_bytes()
    (tmp_path / "maps.npy").write_bytes(data[:keep_bytes])  # cut in the header / in the array
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_part_maps(tmp_path / "maps.npy")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_part_maps(tmp_path / "nothing.npy")
    _write(tmp_path / "maps.npy")
    manifest_path(tmp_path / "maps.npy").unlink()
    with pytest.raises(DataError, match="no manifest"):
        load_part_maps(tmp_path / "maps.npy")


def test_bad_manifests(tmp_path: Path) -> None:
    _write(tmp_path / "maps.npy")
    manifest_path(tmp_path / "maps.npy").write_text("{not json")
    with pytest.raises(DataError, match="cannot be parsed"):
        load_part_maps(tmp_path / "maps.npy")
    _write(tmp_path / "maps.npy")
    _edit_manifest(tmp_path / "maps.npy", format_version=99)
    with pytest.raises(DataError, match="format_version 99"):
        load_part_maps(tmp_path / "maps.npy")
    _write(tmp_path / "maps.npy")
    _edit_manifest(tmp_path / "maps.npy", num_parts="four")
    with pytest.raises(DataError, match="num_parts"):
        load_part_maps(tmp_path / "maps.npy")
    for huge in (10**9, 10**30, 0):  # a K past uint8 would size tensors by it (terabytes)
        _write(tmp_path / "maps.npy")
        _edit_manifest(tmp_path / "maps.npy", num_parts=huge)
        with pytest.raises(DataError, match=r"num_parts .*outside \[1, 256\]"):
            load_part_maps(tmp_path / "maps.npy")


# ---------------------------------------------------------------- oracle maps


def _slow_vote(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    n, size, _ = masks.shape
    h, w = grid
    out = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        for cy in range(h):
            for cx in range(w):
                ys = [y for y in range(size) if y * h // size == cy]
                xs = [x for x in range(size) if x * w // size == cx]
                counts = np.bincount(masks[i][np.ix_(ys, xs)].ravel(), minlength=256)
                out[i, cy, cx] = int(np.argmax(counts))  # first maximum: smaller id on ties
    return out


def test_part_maps_from_hand_built_mask() -> None:
    mask = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 2, 1, 3],
            [2, 2, 3, 3],
            [2, 0, 3, 1],
        ],
        dtype=torch.uint8,
    )
    ds = FakeImageSet(n=1, part_masks=mask[None], num_gt_parts=4)
    got = part_maps_from_masks(ds, (2, 2))
    # cells: {0,0,0,2} -> 0; {1,1,1,3} -> 1; {2,2,2,0} -> 2; {3,3,3,1} -> 3
    assert got.dtype == np.uint8 and got.tolist() == [[[0, 1], [2, 3]]]
    tie = FakeImageSet(n=1, part_masks=torch.tensor([[[3, 1], [1, 3]]], dtype=torch.uint8))
    assert part_maps_from_masks(tie, (1, 1)).tolist() == [[[1]]]  # 2-2 tie -> smaller id


@pytest.mark.parametrize("size,grid", [(8, (4, 4)), (6, (4, 4)), (7, (3, 5))])
def test_part_maps_from_masks_matches_slow_vote(
    size: int, grid: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oracle, "_VOTE_CHUNK", 2)  # several chunks, a ragged last one
    masks = torch.from_numpy(np.random.default_rng(size).integers(0, 5, (5, size, size), dtype=np.uint8))
    ds = FakeImageSet(n=5, part_masks=masks, num_gt_parts=5)
    np.testing.assert_array_equal(part_maps_from_masks(ds, grid), _slow_vote(masks.numpy(), grid))


def test_part_maps_from_masks_needs_masks() -> None:
    with pytest.raises(DataError, match="no ground-truth part masks"):
        part_maps_from_masks(FakeImageSet(), (7, 7))


def test_version_one_manifests_read_by_what_they_covered(tmp_path: Path) -> None:
    _write(tmp_path / "maps.npy")
    mp = manifest_path(tmp_path / "maps.npy")
    old = {k: v for k, v in json.loads(mp.read_text()).items() if k != "view"}
    mp.write_text(json.dumps({**old, "format_version": 1}))
    assert load_part_maps(tmp_path / "maps.npy", dataset=FakeImageSet()).manifest.view == "whole"
    mp.write_text(json.dumps({**old, "format_version": 1, "dataset": "image_folder"}))
    folder = FakeImageSet(name="image_folder")
    assert load_part_maps(tmp_path / "maps.npy").manifest.view == "center"
    with pytest.raises(DataError, match="center crop.*re-export") as err:
        load_part_maps(tmp_path / "maps.npy", dataset=folder)
    assert "\n" not in str(err.value)
    mp.write_text(json.dumps({**old, "format_version": 2, "view": "letterbox"}))
    with pytest.raises(DataError, match="'view'"):
        load_part_maps(tmp_path / "maps.npy")
