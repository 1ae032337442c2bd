"""Tests for ramparts.data: the embedded digits, npz, IDX, shared reference data and splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from ramparts import data
from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError

MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write_idx(path: Path, arr: np.ndarray, *, compress: bool = False) -> None:
    """Write ``arr`` (uint8) as an IDX file: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _indexed_dataset(n: int = 200, num_classes: int = 4) -> Dataset:
    """A dataset whose single pixel encodes the sample index, so splits can be traced back."""
    x = (torch.arange(n, dtype=torch.float32) / n).reshape(n, 1, 1, 1)
    y = torch.arange(n) % num_classes
    return Dataset(x, y, tuple(str(i) for i in range(num_classes)), "indexed")


def _indices(ds: Dataset, n: int) -> set[int]:
    return {round(v * n) for v in ds.x.flatten().tolist()}


def test_digits_shapes_range_and_classes() -> None:
    ds = data.load_digits()
    assert len(ds) == 1797
    assert ds.x.shape == (1797, 1, 8, 8)
    assert ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    assert float(ds.x.min()) == 0.0
    assert float(ds.x.max()) == 1.0
    assert ds.input_shape == (1, 8, 8)
    assert ds.classes == tuple("0123456789")
    assert ds.num_classes == 10
    assert sorted(ds.y.unique().tolist()) == list(range(10))


@pytest.mark.parametrize(
    ("x", "y", "param"),
    [
        (torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), "x"),
        (torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.int64), "x"),
        (torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int32), "y"),
        (torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64), "y"),
        (torch.full((2, 1, 4, 4), float("nan")), torch.zeros(2, dtype=torch.int64), "x"),
        (torch.full((2, 1, 4, 4), 2.0), torch.zeros(2, dtype=torch.int64), "x"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 3]), "y"),
        (torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.int64), "x"),
    ],
)
def test_dataset_rejects_bad_tensors(x: torch.Tensor, y: torch.Tensor, param: str) -> None:
    with pytest.raises(ValidationError, match=rf"^{param}: expected"):
        Dataset(x, y, ("a", "b", "c"), "bad")


def test_dataset_rejects_non_tensor() -> None:
    with pytest.raises(RampartsTypeError, match="torch tensors"):
        Dataset(np.zeros((2, 1, 4, 4), np.float32), torch.zeros(2, dtype=torch.int64), ("a",), "bad")  # type: ignore[arg-type]


def test_subset_by_indices_and_mask() -> None:
    ds = _indexed_dataset(10, 2)
    part = ds.subset([3, 1])
    assert _indices(part, 10) == {1, 3}
    assert part.y.tolist() == [1, 1]
    mask = ds.y == 0
    assert len(ds.subset(mask)) == 5
    with pytest.raises(ValidationError, match="indices"):
        ds.subset([10])
    with pytest.raises(ValidationError, match="indices"):
        ds.subset(torch.tensor([True, False]))


def test_npz_roundtrip_hwc_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    path = tmp_path / "set.npz"
    np.savez(path, x_test=x, y_test=y)
    ds = data.load_npz(path)
    assert ds.x.shape == (5, 3, 6, 7)
    expected = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert torch.equal(ds.x, expected)
    assert ds.y.tolist() == [0, 1, 2, 1, 0]
    assert ds.y.dtype == torch.int64
    assert ds.classes == ("0", "1", "2")
    assert ds.name == "set"


@pytest.mark.parametrize(
    ("shape", "layout", "expected"),
    [
        ((4, 5, 5), "auto", (4, 1, 5, 5)),
        ((4, 3, 5, 6), "auto", (4, 3, 5, 6)),
        ((4, 5, 6, 1), "auto", (4, 1, 5, 6)),
        ((4, 3, 5, 3), "nhwc", (4, 3, 3, 5)),
    ],
)
def test_npz_float_layouts(
    tmp_path: Path, shape: tuple[int, ...], layout: data.Layout, expected: tuple
) -> None:
    x = np.linspace(0, 1, num=int(np.prod(shape)), dtype=np.float32).reshape(shape)
    path = tmp_path / "f.npz"
    np.savez(path, images=x, labels=np.arange(4) % 2, classes=np.array(["cat", "dog"]))
    ds = data.load_npz(path, x_key="images", y_key="labels", layout=layout, name="floats")
    assert ds.x.shape == expected
    assert ds.classes == ("cat", "dog")
    assert ds.name == "floats"
    assert float(ds.x.max()) == 1.0


def test_npz_ambiguous_layout_asks_for_layout(tmp_path: Path) -> None:
    path = tmp_path / "amb.npz"
    np.savez(path, x_test=np.zeros((2, 3, 5, 3), np.float32), y_test=np.zeros(2, np.int64))
    with pytest.raises(ValidationError, match="layout="):
        data.load_npz(path)


def test_npz_missing_key_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2, np.int64))
    with pytest.raises(ValidationError, match=r"x_key: .*images, labels") as info:
        data.load_npz(path)
    assert "'x_test'" in str(info.value)


def test_npz_with_pickled_object_array_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    x = np.empty(2, dtype=object)
    x[:] = [np.zeros((4, 4)), np.ones((4, 4))]
    np.savez(path, x_test=x, y_test=np.zeros(2, np.int64))  # np.savez pickles object arrays
    with pytest.raises(ValidationError, match="never unpickles"):
        data.load_npz(path)


def test_npz_rejects_out_of_range_floats_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.npz"
    np.savez(path, x_test=np.full((2, 4, 4), 200.0, np.float32), y_test=np.zeros(2, np.int64))
    with pytest.raises(ValidationError, match=r"divide 0\.\.255"):
        data.load_npz(path)
    with pytest.raises(ValidationError, match="path: expected an existing file"):
        data.load_npz(tmp_path / "absent.npz")


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"imgs-idx3-ubyte{suffix}", images, compress=compress)
    _write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels, compress=compress)
    ds = data.load_idx(tmp_path / f"imgs-idx3-ubyte{suffix}", tmp_path / f"labels-idx1-ubyte{suffix}")
    assert ds.x.shape == (6, 1, 5, 4)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
    assert ds.y.tolist() == labels.tolist()
    assert ds.num_classes == 10
    assert ds.name == "imgs"


def test_idx_corrupt_header_and_mismatches_rejected(tmp_path: Path) -> None:
    images = np.zeros((3, 4, 4), np.uint8)
    good_images, labels = tmp_path / "i", tmp_path / "l"
    _write_idx(good_images, images)
    _write_idx(labels, np.zeros(3, np.uint8))
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x01\x02" + good_images.read_bytes()[2:])
    with pytest.raises(ValidationError, match="images_path: expected an IDX magic number"):
        data.load_idx(bad_magic, labels)
    bad_type = tmp_path / "bad_type"
    bad_type.write_bytes(b"\x00\x00\x07" + good_images.read_bytes()[3:])
    with pytest.raises(ValidationError, match="IDX type 0x07"):
        data.load_idx(bad_type, labels)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good_images.read_bytes()[:-5])
    with pytest.raises(ValidationError, match="truncated or corrupt"):
        data.load_idx(truncated, labels)
    few_labels = tmp_path / "few"
    _write_idx(few_labels, np.zeros(2, np.uint8))
    with pytest.raises(ValidationError, match="labels_path: expected 3 labels"):
        data.load_idx(good_images, few_labels)
    with pytest.raises(ValidationError, match="images_path: expected 3-D"):
        data.load_idx(labels, labels)


def _require_shared(filename: str) -> None:
    root = data.shared_data_dir()
    if root is None or not (root / filename).is_file():
        pytest.skip(f"shared reference data {filename} not found (set {data.DATA_DIR_ENV})")


def test_mnist_test_split_from_shared_data() -> None:
    _require_shared("mnist.npz")
    ds = data.load_shared("mnist")
    assert ds.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y, minlength=10).tolist() == MNIST_TEST_HISTOGRAM
    assert float(ds.x.min()) >= 0.0
    assert float(ds.x.max()) == 1.0
    assert ds.name == "mnist"


def test_cifar10_from_shared_data() -> None:
    _require_shared("cifar10_test.npz")
    ds = data.load_dataset("cifar10")
    assert ds.x.shape == (10000, 3, 32, 32)
    assert ds.classes[0] == "airplane"
    assert ds.classes[9] == "truck"
    assert torch.bincount(ds.y, minlength=10).tolist() == [1000] * 10


def test_shared_data_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.shared_data_dir() == tmp_path
    with pytest.raises(ValidationError, match=r"RAMPARTS_DATA_DIR: expected a folder holding mnist\.npz"):
        data.load_shared("mnist")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "absent"))
    assert data.shared_data_dir() is None


def test_load_shared_rejects_unknown_name_and_split() -> None:
    with pytest.raises(UnknownNameError, match="name: unknown name 'svhn'"):
        data.load_shared("svhn")
    with pytest.raises(UnknownNameError, match="split: unknown name 'train'"):
        data.load_shared("cifar10", "train")


def test_load_dataset_forms(tmp_path: Path) -> None:
    assert data.load_dataset("digits").name == "digits"
    assert len(data.load_dataset()) == 1797
    np.savez(tmp_path / "s.npz", x_test=np.zeros((3, 4, 4), np.uint8), y_test=np.array([0, 1, 1]))
    assert len(data.load_dataset(str(tmp_path / "s.npz"))) == 3
    _write_idx(tmp_path / "i", np.zeros((2, 4, 4), np.uint8))
    _write_idx(tmp_path / "l", np.array([1, 0], np.uint8))
    assert data.load_dataset(f"idx:{tmp_path / 'i'},{tmp_path / 'l'}").y.tolist() == [1, 0]
    with pytest.raises(ValidationError, match=r"dataset: expected one of 'digits'.*idx:IMAGES,LABELS"):
        data.load_dataset("imagenet")
    with pytest.raises(ValidationError, match="two comma-separated paths"):
        data.load_dataset("idx:only-one")


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    ds = _indexed_dataset(200, 4)
    train, test = data.train_test_split(ds, test_fraction=0.25, seed=3)
    again_train, again_test = data.train_test_split(ds, test_fraction=0.25, seed=3)
    other_train, _ = data.train_test_split(ds, test_fraction=0.25, seed=4)
    assert torch.equal(train.x, again_train.x)
    assert torch.equal(test.x, again_test.x)
    assert not torch.equal(train.x, other_train.x)
    train_idx, test_idx = _indices(train, 200), _indices(test, 200)
    assert len(test) == 50
    assert len(train) == 150
    assert train_idx.isdisjoint(test_idx)
    assert train_idx | test_idx == set(range(200))
    assert all(12 <= c <= 13 for c in torch.bincount(test.y, minlength=4).tolist())


def test_split_rejects_bad_fraction_and_unstratifiable() -> None:
    ds = _indexed_dataset(20, 2)
    with pytest.raises(ValidationError, match="test_fraction"):
        data.train_test_split(ds, test_fraction=1.0)
    lonely = Dataset(ds.x, torch.tensor([0] * 19 + [1]), ("a", "b"), "lonely")
    with pytest.raises(ValidationError, match="stratify=False"):
        data.train_test_split(lonely)
    assert len(data.train_test_split(lonely, stratify=False)[1]) == 5


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_roundtrip_grey(tmp_path: Path) -> None:
    """PNGs written with Pillow come back as the same pixels / 255, classes sorted by folder name."""
    rng = np.random.default_rng(0)
    pixels = {name: rng.integers(0, 256, size=(3, 5, 7), dtype=np.uint8) for name in ("zebra", "ant", "cat")}
    for name, imgs in pixels.items():
        for i, img in enumerate(imgs):
            _write_png(tmp_path / "pets" / name / f"{i}.png", img)
    (tmp_path / "pets" / "README.txt").write_text("ignored: not in a class folder")
    (tmp_path / "pets" / "ant" / "notes.txt").write_text("ignored: not an image")
    (tmp_path / "pets" / ".cache").mkdir()
    ds = data.load_dataset(str(tmp_path / "pets"))
    assert ds.classes == ("ant", "cat", "zebra")
    assert ds.name == "pets"
    assert ds.input_shape == (1, 5, 7)
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = np.concatenate([pixels[c] for c in ds.classes]).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.x[:, 0].numpy(), expected)


def test_image_folder_rgb_mixed_modes_and_16_bit(tmp_path: Path) -> None:
    from PIL import Image

    _write_png(tmp_path / "a" / "grey.png", np.full((4, 4), 255, np.uint8))
    _write_png(
        tmp_path / "b" / "rgb.png", np.stack([np.full((4, 4), v, np.uint8) for v in (0, 128, 255)], -1)
    )
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b" / "photo.JPG")
    ds = data.load_image_folder(tmp_path)
    assert ds.input_shape == (3, 4, 4), "one RGB image makes the whole set RGB"
    assert ds.x[0].eq(1.0).all(), "a grey image is repeated on the three channels"
    np.testing.assert_allclose(ds.x[2, :, 0, 0].numpy(), [0.0, 128 / 255, 1.0])
    deep = tmp_path / "deep"
    for i, value in enumerate((0, 65535)):
        _write_png(deep / str(i) / "x.png", np.full((2, 2), value, np.uint16))
    assert data.load_image_folder(deep).x.flatten().tolist() == [0.0] * 4 + [1.0] * 4


def test_image_folder_sizes_must_agree_unless_a_size_is_given(tmp_path: Path) -> None:
    _write_png(tmp_path / "a" / "small.png", np.zeros((4, 4), np.uint8))
    _write_png(tmp_path / "b" / "big.png", np.full((8, 6), 200, np.uint8))
    with pytest.raises(
        ValidationError, match=r"^path: .*several sizes \(a/small\.png: 4x4, b/big\.png: 8x6.*@HxW"
    ):
        data.load_image_folder(tmp_path)
    resized = data.load_dataset(f"{tmp_path}@3x5")
    assert resized.input_shape == (1, 3, 5)
    assert resized.x[1].eq(200 / 255).all(), "a flat image stays flat when resized"
    assert data.load_image_folder(tmp_path, size=4).input_shape == (1, 4, 4)
    with pytest.raises(ValidationError, match=r"^size: "):
        data.load_image_folder(tmp_path, size=(0, 4))


def test_image_folder_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^path: .*existing folder"):
        data.load_image_folder(tmp_path / "missing")
    with pytest.raises(ValidationError, match=r"^path: .*one sub-folder per class"):
        data.load_image_folder(tmp_path)
    _write_png(tmp_path / "a" / "ok.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "b").mkdir()
    with pytest.raises(ValidationError, match=r"^path: .*at least one image.*[/\\]b'"):
        data.load_image_folder(tmp_path)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValidationError, match=r"^path: expected a readable .*broken\.png"):
        data.load_dataset(str(tmp_path))
    with pytest.raises(ValidationError, match=r"^dataset: .*FOLDER/CLASS"):
        data.load_dataset(str(tmp_path / "nowhere@8x8"))
