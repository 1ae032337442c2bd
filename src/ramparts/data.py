"""Datasets: the embedded digits, npz files, IDX (MNIST format) files, image folders and the shared reference data.

Every loader returns a :class:`Dataset` of float32 NCHW images in ``[0, 1]`` and int64 labels.
Files are read without unpickling (``np.load(..., allow_pickle=False)``, IDX parsed by hand, images
decoded by Pillow).
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from ramparts.errors import RampartsTypeError, invalid, unknown

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_FORMS",
    "DATA_DIR_ENV",
    "DIGIT_CLASSES",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "load_shared",
    "shared_data_dir",
    "train_test_split",
]

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "RAMPARTS_DATA_DIR"
DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# name -> (file in the shared data dir, splits it holds, class names)
_SHARED: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "mnist": ("mnist.npz", ("train", "test"), DIGIT_CLASSES),
    "cifar10": ("cifar10_test.npz", ("test",), CIFAR10_CLASSES),
}
DATASET_FORMS: tuple[str, ...] = (
    "'digits' (default, embedded)",
    "'mnist' or 'mnist:train'",
    "'cifar10'",
    "a path to a .npz file",
    "'idx:IMAGES,LABELS' (IDX files, plain or .gz)",
    "a folder of class folders, FOLDER/CLASS/*.png|jpg (add @HxW, e.g. FOLDER@32x32, to resize)",
)
# Image files an image folder may hold (lower-cased suffixes); other files are ignored.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
# Pillow modes read as one grey channel; every other mode is converted to RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "I;16", "I;16B", "I;16L"})
_SIZE_SUFFIX = re.compile(r"^(?P<path>.+)@(?P<h>\d+)(?:x(?P<w>\d+))?$")

Layout = Literal["auto", "nhw", "nchw", "nhwc"]
_CHANNEL_COUNTS = (1, 3, 4)
# IDX type byte -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Labelled images: ``x`` float32 NCHW in [0, 1], ``y`` int64 of shape [N] indexing ``classes``."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise invalid(
                "x/y",
                (type(x).__name__, type(y).__name__),
                "torch tensors",
                "convert with torch.as_tensor",
                cls=RampartsTypeError,
            )
        if x.dtype != torch.float32:
            raise invalid("x", x.dtype, "dtype torch.float32", "convert with x.float() (scaled to [0, 1])")
        if x.ndim != 4:
            raise invalid("x", tuple(x.shape), "a 4-D tensor [N, C, H, W]", "add a channel axis")
        if y.dtype != torch.int64:
            raise invalid("y", y.dtype, "dtype torch.int64", "convert with y.long()")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise invalid("y", tuple(y.shape), f"shape [{x.shape[0]}] (one label per image)")
        if x.shape[0] == 0:
            raise invalid("x", tuple(x.shape), "at least one sample")
        if not isinstance(self.classes, tuple) or not self.classes:
            raise invalid("classes", self.classes, "a non-empty tuple of class names")
        if not bool(torch.isfinite(x).all()):
            raise invalid("x", "non-finite values", "finite values", "remove NaN/inf samples")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise invalid(
                "x", f"values in [{lo:g}, {hi:g}]", "values in [0, 1]", "divide 0..255 pixels by 255"
            )
        ylo, yhi = int(y.min()), int(y.max())
        if ylo < 0 or yhi >= len(self.classes):
            raise invalid(
                "y",
                f"labels in [{ylo}, {yhi}]",
                f"labels in [0, {len(self.classes) - 1}] for {len(self.classes)} classes",
                "pass one class name per label",
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``classes``)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        _, c, h, w = self.x.shape
        return (int(c), int(h), int(w))

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Dataset:
        """The samples at ``indices`` (integer indices or a boolean mask), same classes and name."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise invalid("indices", tuple(idx.shape), f"a boolean mask of shape ({len(self)},)")
            idx = idx.nonzero().flatten()
        elif idx.dtype.is_floating_point or idx.dtype.is_complex or idx.ndim != 1:
            raise invalid("indices", idx.dtype, "a 1-D sequence of integer indices or a boolean mask")
        idx = idx.long().to(self.x.device)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise invalid("indices", f"range [{int(idx.min())}, {int(idx.max())}]", f"indices < {len(self)}")
        return Dataset(self.x[idx], self.y[idx], self.classes, self.name)


def load_digits() -> Dataset:
    """scikit-learn's embedded 8x8 digits (1797 images) as [N, 1, 8, 8] in [0, 1]; no download."""
    bunch = sk_datasets.load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Dataset(x.contiguous(), y, DIGIT_CLASSES, "digits")


def load_npz(
    path: str | os.PathLike[str],
    *,
    x_key: str = "x_test",
    y_key: str = "y_test",
    name: str | None = None,
    layout: Layout = "auto",
    classes: Sequence[str] | None = None,
) -> Dataset:
    """Images and labels from a ``.npz`` file, read with ``allow_pickle=False``.

    Images are uint8 (0..255, scaled by 1/255) or float in [0, 1], laid out as NHW, NHWC or NCHW
    (``layout="auto"`` infers it from where the 1/3/4 channel axis is). Class names come from
    ``classes``, else a ``classes`` array in the file, else ``"0".."K-1"``.
    """
    file = _existing_file("path", path)
    try:
        npz = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise invalid("path", str(file), "a readable .npz archive", f"check the file ({exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise invalid("path", str(file), "a .npz archive (several named arrays)", "save with np.savez")
    with npz:
        keys = tuple(npz.files)
        for param, key in (("x_key", x_key), ("y_key", y_key)):
            if key not in keys:
                raise invalid(param, key, f"one of the arrays in {file.name}: {', '.join(keys)}")
        x_raw = _read_npz_array(npz, x_key, file)
        y_raw = _read_npz_array(npz, y_key, file)
        if classes is None and "classes" in keys:
            classes = [str(c) for c in _read_npz_array(npz, "classes", file).tolist()]
    x = _images_to_nchw(x_raw, param=x_key, layout=layout)
    y = _labels_to_tensor(y_raw, param=y_key, n=x.shape[0])
    return Dataset(x, y, _class_names(classes, y), name or file.stem)


def load_idx(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """Images and labels from IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed."""
    images = _read_idx(_existing_file("images_path", images_path), "images_path")
    labels = _read_idx(_existing_file("labels_path", labels_path), "labels_path")
    if images.ndim not in (3, 4):
        raise invalid("images_path", f"{images.ndim}-D IDX array", "3-D [N, H, W] or 4-D [N, H, W, C] images")
    if labels.ndim != 1:
        raise invalid("labels_path", f"{labels.ndim}-D IDX array", "1-D labels [N]")
    if labels.shape[0] != images.shape[0]:
        raise invalid(
            "labels_path",
            f"{labels.shape[0]} labels",
            f"{images.shape[0]} labels, one per image in images_path",
            "pair the images file with its own labels file",
        )
    x = _images_to_nchw(images, param="images_path", layout="nhw" if images.ndim == 3 else "nhwc")
    y = _labels_to_tensor(labels, param="labels_path", n=x.shape[0])
    return Dataset(x, y, _class_names(classes, y), name or _strip_suffixes(Path(images_path).name))


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    name: str | None = None,
) -> Dataset:
    """Labelled images from a folder of class folders, ``path/CLASS/*.png|jpg`` (torchvision's ImageFolder layout).

    Classes are the sub-folder names, sorted; hidden entries and files of other types are ignored. Images
    are grey (one channel) when every one of them is grey, else RGB (grey ones repeated on the three
    channels, alpha dropped); 8-bit pixels are scaled by 1/255, 16-bit grey ones by 1/65535. All images
    must share one size unless ``size`` (``(height, width)`` or one side for squares) is given: then every
    image is resized to it (bilinear). Errors name the folder or the file at fault.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise invalid("path", str(path), "an existing folder of class folders", "check the path")
    target = _image_size(size)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise invalid(
            "path",
            str(root),
            "a folder holding one sub-folder per class",
            "put the images in FOLDER/CLASS/*.png",
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise invalid(
                "path",
                str(folder),
                f"at least one image ({', '.join(IMAGE_SUFFIXES)}) in every class folder",
                "add images or remove the empty folder",
            )
        files += found
        labels += [label] * len(found)
    images = [_read_image(f) for f in files]
    grey = all(img.mode in _GREY_MODES for img in images)
    arrays = [_image_array(img, grey=grey, size=target, file=f) for img, f in zip(images, files, strict=True)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(i for i, a in enumerate(arrays) if a.shape != first)
        a, b = (files[i].relative_to(root).as_posix() for i in (0, odd))
        raise invalid(
            "path",
            f"images of several sizes ({a}: {first[0]}x{first[1]}, {b}: "
            f"{arrays[odd].shape[0]}x{arrays[odd].shape[1]}, height x width)",
            "images of one size",
            f"resize them, or pass a size: '{root}@HxW' (load_image_folder(size=(H, W)))",
        )
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(labels, dtype=torch.int64)
    logger.info("read %d images of %d classes from %s", len(files), len(folders), root)
    return Dataset(x, y, tuple(f.name for f in folders), name or root.name)


def _image_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """`size` as (height, width), validated."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    if (
        not isinstance(pair, tuple)
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    ):
        raise invalid(
            "size", size, "a positive integer or a (height, width) pair of them", "e.g. size=(32, 32)"
        )
    return (pair[0], pair[1])


def _read_image(file: Path) -> PILImage:
    """Decode one image file fully now, so a broken file fails here with its name."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            img.load()
            return img.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise invalid(
            "path", str(file), "a readable PNG, JPEG or BMP image", f"re-save or remove the file ({exc})"
        ) from exc


def _image_array(img: PILImage, *, grey: bool, size: tuple[int, int] | None, file: Path) -> np.ndarray:
    """One image as float32 HWC in [0, 1]: one channel if `grey`, else RGB; resized to `size` (H, W) if given."""
    from PIL import Image

    if grey and img.mode.startswith("I;16"):
        img = img.convert("I")
        scale = 65535.0
        if size is not None:
            img = img.convert("F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    else:
        img = img.convert("L" if grey else "RGB")
        scale = 255.0
        if size is not None:
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / np.float32(scale)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if not np.isfinite(arr).all():
        raise invalid("path", str(file), "an image with finite pixel values")
    return np.clip(arr, 0.0, 1.0)


def shared_data_dir() -> Path | None:
    """The shared reference-data folder, or None where there is none.

    ``$RAMPARTS_DATA_DIR`` wins when set; otherwise the first ``shared/data`` folder found walking up
    from this file, then from the working directory (the repository's ``../shared/data``).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        logger.warning("%s=%s is not a directory; ignoring it", DATA_DIR_ENV, env)
        return None
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def load_shared(name: str, split: str = "test") -> Dataset:
    """A reference dataset from the shared data folder: ``"mnist"`` (train/test) or ``"cifar10"`` (test)."""
    if name not in _SHARED:
        raise unknown("name", name, _SHARED)
    filename, splits, class_names = _SHARED[name]
    if split not in splits:
        raise unknown("split", split, splits)
    root = shared_data_dir()
    if root is None or not (root / filename).is_file():
        raise invalid(
            DATA_DIR_ENV,
            os.environ.get(DATA_DIR_ENV, str(root) if root else None),
            f"a folder holding {filename}",
            f"set {DATA_DIR_ENV} to the folder with the reference data (see shared/data/README.md), "
            "or use the embedded 'digits' dataset",
        )
    return load_npz(
        root / filename,
        x_key=f"x_{split}",
        y_key=f"y_{split}",
        name=name if split == "test" else f"{name}:{split}",
        classes=class_names,
    )


def load_dataset(spec: str = "digits") -> Dataset:
    """One entry point for the CLI; ``spec`` is one of :data:`DATASET_FORMS`."""
    text = spec.strip()
    if text in ("", "digits"):
        return load_digits()
    base, _, split = text.partition(":")
    if base in _SHARED and not Path(text).exists():
        return load_shared(base, split or "test")
    if base == "idx":
        images, sep, labels = split.partition(",")
        if not sep or not images or not labels:
            raise invalid("dataset", spec, "'idx:IMAGES,LABELS' with two comma-separated paths")
        return load_idx(images, labels)
    if text.endswith(".npz"):
        return load_npz(text)
    folder, size = _folder_spec(text)
    if folder is not None:
        return load_image_folder(folder, size=size)
    raise invalid("dataset", spec, "one of " + "; ".join(DATASET_FORMS))


def _folder_spec(text: str) -> tuple[Path | None, tuple[int, int] | None]:
    """`FOLDER` or `FOLDER@HxW` / `FOLDER@S` -> (the folder, the size); (None, None) when it names no folder."""
    path = Path(text).expanduser()
    if path.is_dir():
        return path, None
    match = _SIZE_SUFFIX.match(text)
    if match is None or not Path(match["path"]).expanduser().is_dir():
        return None, None
    h = int(match["h"])
    w = int(match["w"]) if match["w"] is not None else h
    if h < 1 or w < 1:
        raise invalid("dataset", text, "a size of at least 1x1 after @", "e.g. FOLDER@32x32")
    return Path(match["path"]).expanduser(), (h, w)


def train_test_split(
    ds: Dataset, *, test_fraction: float = 0.25, seed: int = 0, stratify: bool = True
) -> tuple[Dataset, Dataset]:
    """Split into (train, test), deterministic for ``seed``; stratified by label unless ``stratify=False``."""
    if not 0.0 < test_fraction < 1.0:
        raise invalid("test_fraction", test_fraction, "a fraction strictly between 0 and 1")
    n_test = round(len(ds) * test_fraction)
    if n_test < 1 or n_test >= len(ds):
        raise invalid(
            "test_fraction", test_fraction, f"a fraction leaving both parts of {len(ds)} samples non-empty"
        )
    labels = ds.y.cpu().numpy()
    if stratify:
        counts = np.bincount(labels)
        if counts[counts > 0].min() < 2:
            raise invalid("stratify", True, "every class to have at least 2 samples", "pass stratify=False")
    try:
        train_idx, test_idx = model_selection.train_test_split(
            np.arange(len(ds)), test_size=n_test, random_state=seed, stratify=labels if stratify else None
        )
    except ValueError as exc:
        raise invalid("test_fraction", test_fraction, f"a split the label counts allow ({exc})") from exc
    train = ds.subset(torch.from_numpy(np.sort(train_idx)))
    test = ds.subset(torch.from_numpy(np.sort(test_idx)))
    return train, test


def _existing_file(param: str, path: str | os.PathLike[str]) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise invalid(param, str(path), "an existing file", "check the path")
    return file


def _read_npz_array(npz: np.lib.npyio.NpzFile, key: str, file: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise invalid(
            key,
            f"an object (pickled) array in {file.name}",
            "a plain numeric or string array",
            "re-save the array with a numeric dtype; Ramparts never unpickles data files",
        ) from exc


def _images_to_nchw(arr: np.ndarray, *, param: str, layout: Layout) -> torch.Tensor:
    """uint8 0..255 or float 0..1 images in NHW/NHWC/NCHW -> float32 NCHW tensor."""
    if arr.dtype.kind in "iu":
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise invalid(param, f"integers in [{arr.min()}, {arr.max()}]", "integer pixels in 0..255")
        data = arr.astype(np.float32) / np.float32(255.0)
    elif arr.dtype.kind == "f":
        data = arr.astype(np.float32)
    else:
        raise invalid(param, arr.dtype, "uint8 pixels (0..255) or floats in [0, 1]")
    if layout == "auto":
        layout = _infer_layout(data.shape, param)
    expected_ndim = 3 if layout == "nhw" else 4
    if data.ndim != expected_ndim:
        raise invalid(param, data.shape, f"a {expected_ndim}-D array for layout {layout!r}")
    tensor = torch.from_numpy(np.ascontiguousarray(data))
    if layout == "nhw":
        tensor = tensor.unsqueeze(1)
    elif layout == "nhwc":
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor.contiguous()


def _infer_layout(shape: tuple[int, ...], param: str) -> Layout:
    if len(shape) == 3:
        return "nhw"
    if len(shape) != 4:
        raise invalid(param, shape, "images shaped [N, H, W], [N, H, W, C] or [N, C, H, W]")
    chw, hwc = shape[1] in _CHANNEL_COUNTS, shape[3] in _CHANNEL_COUNTS
    if chw != hwc:
        return "nchw" if chw else "nhwc"
    raise invalid(
        param,
        shape,
        f"exactly one of axis 1 or axis 3 to be a channel axis of size {_CHANNEL_COUNTS}",
        "pass layout='nchw' or layout='nhwc'",
    )


def _labels_to_tensor(arr: np.ndarray, *, param: str, n: int) -> torch.Tensor:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise invalid(param, f"{arr.dtype} array of shape {arr.shape}", "1-D integer class labels")
    if arr.shape[0] != n:
        raise invalid(param, f"{arr.shape[0]} labels", f"{n} labels, one per image")
    return torch.from_numpy(arr.astype(np.int64))


def _class_names(classes: Sequence[str] | None, y: torch.Tensor) -> tuple[str, ...]:
    if classes is not None:
        return tuple(str(c) for c in classes)
    return tuple(str(i) for i in range(int(y.max()) + 1))


def _strip_suffixes(filename: str) -> str:
    for suffix in (".gz", ".idx3-ubyte", ".idx1-ubyte", "-idx3-ubyte", "-idx1-ubyte"):
        filename = filename.removesuffix(suffix)
    return filename


def _read_idx(file: Path, param: str) -> np.ndarray:
    """Parse an IDX file: 2 zero bytes, a type byte, a dim-count byte, big-endian uint32 dims, data."""
    raw = file.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise invalid(
                param, str(file), "a valid gzip-compressed IDX file", f"re-download it ({exc})"
            ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise invalid(
            param, raw[:4].hex(), "an IDX magic number 0x0000TTDD", "pass an IDX (MNIST-format) file"
        )
    type_byte, ndim = raw[2], raw[3]
    if type_byte not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{t:02X}" for t in _IDX_DTYPES)
        raise invalid(param, f"IDX type 0x{type_byte:02X}", f"one of {allowed}")
    if ndim == 0:
        raise invalid(param, "IDX header with 0 dimensions", "at least 1 dimension")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise invalid(param, f"{len(raw)} bytes", f"at least {header} bytes for a {ndim}-D IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_byte])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise invalid(
            param,
            f"{len(raw)} bytes",
            f"{expected} bytes for dims {dims} of {dtype.name}",
            "the file is truncated or corrupt; re-download it",
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
