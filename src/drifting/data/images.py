"""Class-labelled image datasets held in memory as ``uint8`` arrays.

Every loader returns an :class:`ImageDataset`: ``images`` ``[N, H, W, C]`` uint8,
``labels`` ``[N]`` int64, the number of classes and their names. Training code
keeps dataset *indices* (see :mod:`drifting.data.queue`) and turns them into
model inputs with :meth:`ImageDataset.to_tensor` (float32 ``[n, C, H, W]`` in
``[-1, 1]``).

Sources:

* IDX files (the MNIST / Fashion-MNIST format, plain or gzip-compressed):
  :func:`read_idx`, :func:`load_idx_dataset`, :func:`load_mnist`,
  :func:`load_fashion_mnist` (Debian package ``dataset-fashion-mnist``).
* an ``.npz`` file with ``images`` and ``labels`` arrays: :func:`load_npz`.
* a folder with one sub-directory of image files per class:
  :func:`load_image_folder`.
* :func:`load_dataset` picks one of the above from a short string, which is
  what a command line ``--data`` option wants.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "ImageDataset",
    "read_idx",
    "load_idx_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_npz",
    "load_image_folder",
    "load_dataset",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_ROOT",
    "FASHION_MNIST_ENV",
    "IMAGE_EXTENSIONS",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
"""Fashion-MNIST class names, in label order."""

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the four IDX files."""

FASHION_MNIST_ENV = "DRIFTING_FASHION_MNIST"
"""Environment variable that overrides :data:`FASHION_MNIST_DEFAULT_ROOT`."""

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
)
"""File extensions (lower case) that :func:`load_image_folder` reads."""

SPLITS: tuple[str, ...] = ("train", "test")

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}
_IDX_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}
# Pillow modes without colour channels; any other mode counts as colour.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


# ---------------------------------------------------------------------------
# the dataset container
# ---------------------------------------------------------------------------


@dataclass
class ImageDataset:
    """Images and integer class labels, all in memory.

    Attributes:
        images: ``uint8`` array ``[N, H, W, C]``.
        labels: ``int64`` array ``[N]`` with values in ``[0, num_classes)``
            (other integer dtypes are converted).
        num_classes: number of classes (may exceed the largest label present).
        class_names: ``num_classes`` human-readable names.
        name: short name of the data set (used in logs and file names).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    name: str = "images"

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray):
            raise ValueError(f"images must be a numpy array, got {type(self.images).__name__}")
        if self.images.dtype != np.uint8:
            raise ValueError(f"images must have dtype uint8 (values 0..255), got {self.images.dtype}")
        if self.images.ndim != 4:
            raise ValueError(
                f"images must have shape [N, H, W, C] (4 dims), got shape {tuple(self.images.shape)}"
            )
        if min(self.images.shape[1:]) < 1:
            raise ValueError(f"images must have H, W, C >= 1, got shape {tuple(self.images.shape)}")
        labels = np.asarray(self.labels)
        if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape [N] (1 dim), got shape {tuple(labels.shape)}")
        self.labels = labels.astype(np.int64, copy=False)
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"images and labels must have the same length, got {len(self.images)} images "
                f"and {len(self.labels)} labels"
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)):
            raise ValueError(f"num_classes must be an int >= 1, got {self.num_classes!r}")
        self.num_classes = int(self.num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {self.num_classes}")
        if len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"labels must lie in [0, num_classes) = [0, {self.num_classes}), "
                    f"found values in [{lo}, {hi}]"
                )
        self.class_names = [str(c) for c in self.class_names] or [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names must have num_classes = {self.num_classes} entries, "
                f"got {len(self.class_names)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        h, w, c = self.shape
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape=({h}, {w}, {c}), "
            f"num_classes={self.num_classes})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(H, W, C)``."""
        _, h, w, c = self.images.shape
        return int(h), int(w), int(c)

    def _check_indices(self, indices) -> np.ndarray:
        """Turn ``indices`` (list, numpy array or tensor of ints) into a checked int64 array."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.size == 0:
            return idx.astype(np.int64)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= len(self):
            raise ValueError(f"indices must lie in [0, {len(self)}), found values in [{lo}, {hi}]")
        return idx.astype(np.int64, copy=False)

    def to_tensor(self, indices=None) -> torch.Tensor:
        """Images at ``indices`` as float32 ``[*indices.shape, C, H, W]`` scaled to ``[-1, 1]``.

        ``indices`` is a sequence, numpy array or tensor of ints (any shape; a 1-D
        index of length n gives ``[n, C, H, W]``); None means the whole dataset.
        Pixel value ``v`` maps to ``v / 127.5 - 1``.
        """
        idx = np.arange(len(self)) if indices is None else self._check_indices(indices)
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))  # [*I, H, W, C] uint8
        x = x.movedim(-1, -3)  # [*I, C, H, W]
        return (x.to(torch.float32) / 127.5 - 1.0).contiguous()

    def class_indices(self) -> list[np.ndarray]:
        """For each class ``c`` (in order), the int64 indices of its images (ascending)."""
        order = np.argsort(self.labels, kind="stable")  # [N]
        counts = np.bincount(self.labels, minlength=self.num_classes)  # [K]
        return [a.astype(np.int64) for a in np.split(order, np.cumsum(counts)[:-1])]

    def subset(self, indices) -> "ImageDataset":
        """A new dataset holding copies of the images at ``indices`` (1-D), same classes."""
        idx = self._check_indices(indices)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(idx.shape)}")
        return ImageDataset(
            images=self.images[idx].copy(),
            labels=self.labels[idx].copy(),
            num_classes=self.num_classes,
            class_names=list(self.class_names),
            name=self.name,
        )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


# ---------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a native-endian numpy array.

    The IDX header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dims, then one big-endian
    int32 per dim; the data follows, big-endian, in C order. Gzip is detected from
    the file's first bytes, not its name.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ValueError: bad magic number, unknown type code, truncated or oversized data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file, header needs 4 bytes, file has {len(raw)}")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file, magic number starts with bytes {raw[0]:#04x} {raw[1]:#04x}, "
            "expected 0x00 0x00"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        allowed = ", ".join(f"{c:#04x}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX dtype code {code:#04x}, allowed codes are {allowed}")
    if ndim < 1:
        raise ValueError(f"{path}: IDX header gives ndim = 0, expected at least 1 dim")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated IDX header, {ndim} dims need {header} bytes, file has {len(raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise ValueError(
            f"{path}: truncated IDX data, shape {dims} needs {expected} bytes, found {found}"
        )
    if found > expected:
        raise ValueError(
            f"{path}: {found - expected} unexpected trailing bytes after IDX data of shape {dims}"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))  # copy: writable, native order


def _idx_candidates(split: str, kind: str) -> list[str]:
    """File names tried for ``kind`` in {"images", "labels"} of ``split``, in order."""
    prefix = _IDX_PREFIX[split]
    idx = "idx3" if kind == "images" else "idx1"
    names = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"]
    return [n + ext for n in names for ext in ("", ".gz")]


def _find_idx_file(root: Path, split: str, kind: str) -> Path:
    for name in _idx_candidates(split, kind):
        if (root / name).is_file():
            return root / name
    both = _idx_candidates(split, "images") + _idx_candidates(split, "labels")
    raise FileNotFoundError(
        f"no IDX {kind} file for split {split!r} in {root}; looked for: {', '.join(both)}"
    )


def _has_idx_files(root: Path) -> bool:
    return any((root / n).is_file() for s in SPLITS for k in ("images", "labels")
               for n in _idx_candidates(s, k))


def load_idx_dataset(
    root: str | os.PathLike,
    split: str = "train",
    *,
    name: str = "idx",
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """Load an MNIST-style split from the IDX files in directory ``root``.

    For ``split="train"`` it reads ``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte`` (for ``"test"`` the ``t10k-`` files), each plain or
    ``.gz``, also under the ``train-images.idx3-ubyte`` naming. Images ``[N, H, W]``
    get a channel axis (C = 1). Without ``class_names`` the classes are ``"0"`` ..
    ``str(max label)``.
    """
    _check_split(split)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"IDX directory not found: {root}")
    images = read_idx(_find_idx_file(root, split, "images"))
    labels = read_idx(_find_idx_file(root, split, "labels"))
    if images.dtype != np.uint8:
        raise ValueError(f"IDX images in {root} must be uint8 (code 0x08), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]  # [N, H, W] -> [N, H, W, 1]
    if images.ndim != 4:
        raise ValueError(
            f"IDX images in {root} must have 3 dims [N, H, W] or 4 dims [N, H, W, C], "
            f"got shape {images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"IDX labels in {root} must be a 1-D integer array, got {labels.dtype} shape {labels.shape}"
        )
    if class_names is None:
        if len(labels) == 0:
            raise ValueError(f"IDX labels in {root} are empty; pass class_names to set the classes")
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageDataset(images, labels.astype(np.int64), len(class_names), list(class_names), name)


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> ImageDataset:
    """Fashion-MNIST (28x28 grayscale, 10 classes; 60000 train / 10000 test images).

    ``root`` defaults to ``$DRIFTING_FASHION_MNIST`` if set, else
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
    """
    _check_split(split)
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT
    try:
        return load_idx_dataset(root, split, name="fashion-mnist", class_names=FASHION_MNIST_CLASSES)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({err}). Get it with `sudo apt install dataset-fashion-mnist` "
            f"(installs {FASHION_MNIST_DEFAULT_ROOT}), or pass root=<dir> / set "
            f"{FASHION_MNIST_ENV}=<dir> to a directory holding the IDX files "
            "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
            "t10k-labels-idx1-ubyte.gz)"
        ) from err


def load_mnist(root: str | os.PathLike, split: str = "train") -> ImageDataset:
    """MNIST digits from the IDX files in directory ``root``; classes ``"0"`` .. ``"9"``."""
    return load_idx_dataset(root, split, name="mnist", class_names=[str(i) for i in range(10)])


# ---------------------------------------------------------------------------
# .npz files
# ---------------------------------------------------------------------------


# what numpy and zipfile raise on a truncated, overwritten or non-.npz file (or a corrupt member of one)
_NPZ_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _npz_reason(err: BaseException) -> str:
    text = str(err)
    if "allow_pickle" in text:  # numpy's advice to unpickle is not ours to give: we never unpickle
        return "it is neither an .npz archive nor an .npy array, or an array in it needs pickle"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def open_npz(path: Path, what: str, expect: str):
    """``np.load(path)`` of an ``.npz`` archive without pickle; clear errors for a missing file
    (FileNotFoundError naming ``what``), an unreadable one or a plain ``.npy`` (ValueError naming
    ``expect``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as err:
        raise ValueError(f"{path}: not a readable .npz file ({_npz_reason(err)}); expected an .npz archive "
                         f"with {expect}, as written by np.savez") from err
    if not hasattr(npz, "files"):  # a plain .npy saved under an .npz name
        raise ValueError(f"{path}: expected an .npz archive with {expect}, got a single array")
    return npz


def read_npz_array(npz, key: str, path: Path) -> np.ndarray:
    """``npz[key]`` (of an archive from :func:`open_npz`), with a ValueError naming ``path`` and ``key`` when
    the member is truncated or corrupt, or holds objects that would need pickle."""
    try:
        return npz[key]
    except _NPZ_READ_ERRORS as err:
        raise ValueError(f"{path}: cannot read array {key!r} ({_npz_reason(err)}); the file is truncated or "
                         "corrupt, or the array holds Python objects: store numbers (e.g. images as uint8, "
                         "labels as int) and write the file again with np.savez") from err


def load_npz(path: str | os.PathLike) -> ImageDataset:
    """Load a dataset from an ``.npz`` file (never unpickles).

    Keys: ``images`` uint8 ``[N, H, W, C]`` (or ``[N, H, W]``, read as C = 1),
    ``labels`` integer ``[N]``, optional ``class_names`` (a string array, e.g.
    ``np.array(names, dtype=str)``). Without names the classes are ``"0"`` ..
    ``str(max label)``.
    """
    path = Path(path).expanduser()
    npz = open_npz(path, "npz file", "keys 'images' and 'labels'")
    with npz:
        missing = [k for k in ("images", "labels") if k not in npz.files]
        if missing:
            raise ValueError(
                f"{path}: missing key(s) {missing}; required keys are 'images' and 'labels' "
                f"(optional 'class_names'), found {sorted(npz.files)}"
            )
        try:
            images, labels = npz["images"], npz["labels"]
            names = npz["class_names"] if "class_names" in npz.files else None
        except ValueError as err:  # object arrays need pickle, which we refuse
            raise ValueError(
                f"{path}: an array needs pickle to load ({err}); store images as uint8, labels as "
                "int and class_names as a string array (np.array(names, dtype=str))"
            ) from err
        except _NPZ_READ_ERRORS as err:  # a truncated or corrupt member
            raise ValueError(f"{path}: cannot read its arrays ({_npz_reason(err)}); the file is truncated or "
                             "corrupt: write it again with np.savez") from err
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' must have dtype uint8 (values 0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]  # [N, H, W] -> [N, H, W, 1]
    if images.ndim != 4:
        raise ValueError(
            f"{path}: 'images' must have shape [N, H, W, C] or [N, H, W], got {tuple(images.shape)}"
        )
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise ValueError(
            f"{path}: 'labels' must be a 1-D integer array, got dtype {labels.dtype} "
            f"shape {tuple(labels.shape)}"
        )
    if names is not None:
        if names.dtype.kind not in "US" or names.ndim != 1:
            raise ValueError(
                f"{path}: 'class_names' must be a 1-D string array, got "
                f"dtype {names.dtype} shape {names.shape}"
            )
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    else:
        if len(labels) == 0:
            raise ValueError(f"{path}: 'labels' is empty; add 'class_names' to set the classes")
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageDataset(images, labels.astype(np.int64), len(class_names), class_names, path.stem)


# ---------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------


def _parse_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be None, an int or a pair (H, W) of ints, got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw


def _list_image_folder(root: Path) -> tuple[list[Path], list[Path], list[int]]:
    """``(class directories, image files, their labels)`` of ``root/<class>/<image>``, sorted by name;
    hidden entries and files without an extension of :data:`IMAGE_EXTENSIONS` left out."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"no class sub-directories in {root}; expected one directory per class: {root}/<class>/<image>"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        found = sorted(
            p for p in d.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise ValueError(
                f"class directory {d} holds no image files (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        files += found
        labels += [label] * len(found)
    return class_dirs, files, labels


def load_image_folder(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
) -> ImageDataset:
    """Load ``path/<class>/<image>`` files; sorted sub-directory names are the classes.

    Files with an extension in :data:`IMAGE_EXTENSIONS` are read with Pillow
    (others are ignored, as are hidden files and directories). All images are
    converted to one mode: grayscale (``L``, C = 1) if ``grayscale=True``, RGB
    (C = 3) if ``grayscale=False``, and with ``grayscale=None`` RGB as soon as
    any image has a colour mode (``RGB``, ``RGBA``, ``P``, ...), else ``L``.
    Alpha is dropped. ``size`` (an int or ``(H, W)``) resizes every image
    (bicubic); without it all images must already have the same size.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - Pillow ships with matplotlib
        raise ImportError("load_image_folder needs Pillow: pip install pillow") from err

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    hw = _parse_size(size)
    if grayscale not in (None, True, False):
        raise ValueError(f"grayscale must be None (auto), True or False, got {grayscale!r}")

    class_dirs, files, labels = _list_image_folder(root)
    # pass 1: headers only (mode, size) to choose the common mode and check sizes
    modes, sizes = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                modes.append(im.mode)
                sizes.append((im.height, im.width))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {f}: {err}") from err
    if grayscale is None:
        grayscale = all(m in _GRAY_MODES for m in modes)
    mode, channels = ("L", 1) if grayscale else ("RGB", 3)
    if hw is None:
        distinct = sorted(set(sizes))
        if len(distinct) > 1:
            raise ValueError(
                f"images in {root} have different sizes (H, W) {distinct[:4]}"
                f"{' ...' if len(distinct) > 4 else ''}; pass size=<int> or size=(H, W) to resize them"
            )
        hw = distinct[0]

    # pass 2: decode, convert, resize into one array
    out = np.empty((len(files), hw[0], hw[1], channels), dtype=np.uint8)  # [N, H, W, C]
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if (im.height, im.width) != hw:
                    im = im.resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)  # [H, W] or [H, W, 3]
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {f}: {err}") from err
        out[i] = a.reshape(hw[0], hw[1], channels)
    return ImageDataset(
        out, np.asarray(labels, dtype=np.int64), len(class_dirs), [d.name for d in class_dirs], root.name
    )


# ---------------------------------------------------------------------------
# one string -> a dataset
# ---------------------------------------------------------------------------

_SPEC_FORMS = (
    "'fashion-mnist' (or 'fashion-mnist:<dir>'), 'mnist:<dir>', or a path to: a directory of IDX "
    "files (train-images-idx3-ubyte[.gz], ...), an .npz file (keys images, labels), or an image "
    "folder (<dir>/<class>/<image>)"
)


def _single_split(kind: str, path: Path, split: str) -> None:
    if split != "train":
        raise ValueError(
            f"split={split!r} is not available for {kind} {path}: it holds a single split, load it "
            "with split='train' and point to a separate file or folder for other splits"
        )


def load_dataset(spec: str, split: str = "train", **kw) -> ImageDataset:
    """Load a dataset named by a short string ``spec``.

    Accepted forms: ``"fashion-mnist"`` (see :func:`load_fashion_mnist`),
    ``"fashion-mnist:<dir>"``, ``"mnist:<dir>"``, or a path to a directory of IDX
    files, an ``.npz`` file or an image folder. ``kw`` goes to the chosen loader
    (e.g. ``size=`` / ``grayscale=`` for image folders). ``.npz`` files and image
    folders hold one split, loaded as ``"train"``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty string: {_SPEC_FORMS}; got {spec!r}")
    _check_split(split)
    s = spec.strip()
    head, sep, rest = s.partition(":")
    key = head.lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist"):
        root = rest if sep else kw.pop("root", None)
        return load_fashion_mnist(root or None, split, **kw)
    if key == "mnist":
        if not rest:
            raise ValueError("spec 'mnist' needs the directory holding its IDX files: 'mnist:<dir>'")
        return load_mnist(rest, split, **kw)
    p = Path(s).expanduser()
    if p.is_file() and p.suffix.lower() == ".npz":
        _single_split("npz file", p, split)
        return load_npz(p, **kw)
    if p.is_dir():
        if _has_idx_files(p):
            kw.setdefault("name", p.name)
            return load_idx_dataset(p, split, **kw)
        if any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir()):
            _single_split("image folder", p, split)
            return load_image_folder(p, **kw)
        raise ValueError(f"directory {p} holds neither IDX files nor class sub-directories; spec "
                         f"must be {_SPEC_FORMS}")
    why = "no such file or directory" if not p.exists() else "unsupported file type"
    raise ValueError(f"unknown dataset spec {spec!r} ({why}); accepted forms: {_SPEC_FORMS}")
