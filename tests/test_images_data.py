import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image  # noqa: E402  (Pillow comes with matplotlib)

from drifting.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEFAULT_ROOT,
    ImageDataset,
    load_dataset,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_folder,
    load_mnist,
    load_npz,
    read_idx,
)

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding written by hand: 00 00 <code> <ndim>, big-endian int32 dims, big-endian data."""
    header = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def tiny_split(rng, n=6, h=4, w=5, classes=3):
    images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.uint8)
    return images, labels


def write_idx_dir(root: Path, rng, gz=False, dotted=False, splits=("train", "t10k"), n=6):
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix in splits:
        images, labels = tiny_split(rng, n=n)
        sep = "." if dotted else "-"
        ext = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images{sep}idx3-ubyte{ext}", images, gz)
        write_idx(root / f"{prefix}-labels{sep}idx1-ubyte{ext}", labels, gz)
        out[prefix] = (images, labels)
    return out


# ---------------------------------------------------------------------------
# ImageDataset
# ---------------------------------------------------------------------------


def make_ds(n=5, h=3, w=2, c=3, k=4):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    return ImageDataset(images, np.arange(n) % k, k, [f"c{i}" for i in range(k)], "tiny")


def test_dataset_basics_and_to_tensor_layout():
    ds = make_ds()
    assert len(ds) == 5 and ds.shape == (3, 2, 3) and ds.labels.dtype == np.int64
    x = ds.to_tensor([0, 1, 2])
    assert x.dtype == torch.float32 and x.shape == (3, 3, 3, 2)  # [n, C, H, W]
    assert torch.all(x[0] == -1.0) and torch.all(x[1] == 1.0)
    assert x.min() >= -1 and x.max() <= 1
    # layout: x[i, c, h, w] == images[i, h, w, c] / 127.5 - 1
    expect = torch.from_numpy(ds.images[2].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(x[2], expect)
    assert ds.to_tensor().shape == (5, 3, 3, 2)
    assert ds.to_tensor(torch.tensor([[0, 1], [2, 3]])).shape == (2, 2, 3, 3, 2)  # [Nc, n, C, H, W]
    assert "tiny" in repr(ds)


def test_dataset_class_indices_and_subset():
    ds = make_ds(n=7, k=3)
    ci = ds.class_indices()
    assert [a.tolist() for a in ci] == [[0, 3, 6], [1, 4], [2, 5]]
    sub = ds.subset(np.array([6, 1]))
    assert len(sub) == 2 and sub.labels.tolist() == [0, 1] and sub.num_classes == 3
    assert np.array_equal(sub.images[0], ds.images[6]) and sub.class_names == ds.class_names
    before = ds.images[6].copy()
    sub.images[0] = 7  # subset holds a copy
    assert np.array_equal(ds.images[6], before)
    empty = ImageDataset(np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 0, 2, 2]), 4)
    assert [len(a) for a in empty.class_indices()] == [2, 0, 2, 0]
    assert empty.class_names == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(images=np.zeros((2, 2, 2, 1), np.float32)), "images must have dtype uint8"),
        (dict(images=np.zeros((2, 2, 2), np.uint8)), r"images must have shape \[N, H, W, C\]"),
        (dict(images=[[1]]), "images must be a numpy array"),
        (dict(labels=np.array([0.0, 1.0])), "labels must have an integer dtype"),
        (dict(labels=np.zeros((2, 1), np.int64)), r"labels must have shape \[N\]"),
        (dict(labels=np.array([0, 1, 1])), "same length"),
        (dict(labels=np.array([0, 2])), r"labels must lie in \[0, num_classes\)"),
        (dict(labels=np.array([-1, 0])), r"labels must lie in \[0, num_classes\)"),
        (dict(num_classes=0), "num_classes must be an int >= 1"),
        (dict(class_names=["a", "b", "c"]), "class_names must have num_classes = 2"),
    ],
)
def test_dataset_validation(kwargs, match):
    base = dict(images=np.zeros((2, 2, 2, 1), np.uint8), labels=np.array([0, 1]), num_classes=2,
                class_names=["a", "b"], name="x")
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ImageDataset(**base)


def test_dataset_index_errors():
    ds = make_ds()
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        ds.to_tensor([5])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        ds.subset([-1])
    with pytest.raises(ValueError, match="indices must be integers"):
        ds.to_tensor([0.5])
    with pytest.raises(ValueError, match="indices must be 1-D"):
        ds.subset([[0]])


# ---------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    out = read_idx(write_idx(tmp_path / ("a.gz" if gz else "a"), arr, gz))
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.shape == (2, 3, 4)
    assert np.array_equal(out, arr) and out.flags.writeable


def test_read_idx_gzip_detected_by_content(tmp_path):
    arr = np.arange(5, dtype=np.uint8)
    p = tmp_path / "noext"
    p.write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(p), arr)


def test_read_idx_errors(tmp_path):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    cases = {
        "missing": (None, FileNotFoundError, "IDX file not found"),
        "magic": (b"\x01\x00" + good[2:], ValueError, "not an IDX file"),
        "dtype": (good[:2] + b"\x07" + good[3:], ValueError, "unknown IDX dtype code 0x07"),
        "tiny": (b"\x00\x00", ValueError, "header needs 4 bytes"),
        "ndim0": (b"\x00\x00\x08\x00", ValueError, "ndim = 0"),
        "header": (good[:9], ValueError, "truncated IDX header"),
        "data": (good[:-1], ValueError, "truncated IDX data"),
        "trailing": (good + b"\x00", ValueError, "trailing bytes"),
        "gz": (gzip.compress(good)[:-10], ValueError, "corrupt or truncated gzip"),
    }
    for name, (data, exc, match) in cases.items():
        p = tmp_path / name
        if data is not None:
            p.write_bytes(data)
        with pytest.raises(exc, match=match):
            read_idx(p)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path)  # a directory


@pytest.mark.parametrize("gz, dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_load_idx_dataset_both_splits(tmp_path, gz, dotted):
    data = write_idx_dir(tmp_path / "d", np.random.default_rng(1), gz=gz, dotted=dotted)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_idx_dataset(tmp_path / "d", split, name="tiny", class_names=["a", "b", "c"])
        images, labels = data[prefix]
        assert ds.images.shape == (6, 4, 5, 1) and ds.shape == (4, 5, 1)
        assert np.array_equal(ds.images[..., 0], images) and np.array_equal(ds.labels, labels)
        assert ds.labels.dtype == np.int64 and ds.num_classes == 3 and ds.name == "tiny"
    inferred = load_idx_dataset(tmp_path / "d")
    assert inferred.class_names == ["0", "1", "2"]


def test_load_idx_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX directory not found"):
        load_idx_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\]"):
        load_idx_dataset(tmp_path, "val")
    write_idx_dir(tmp_path / "only_train", np.random.default_rng(0), splits=("train",))
    with pytest.raises(FileNotFoundError,
                       match="looked for: t10k-images-idx3-ubyte, t10k-images-idx3-ubyte.gz"):
        load_idx_dataset(tmp_path / "only_train", "test")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_idx(bad / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.float32))
    write_idx(bad / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="must be uint8"):
        load_idx_dataset(bad)
    write_idx(bad / "train-images-idx3-ubyte", np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="must have 3 dims"):
        load_idx_dataset(bad)
    write_idx(bad / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(bad / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="same length"):
        load_idx_dataset(bad)
    write_idx(bad / "train-labels-idx1-ubyte", np.array([0, 1, 5], np.uint8))
    with pytest.raises(ValueError, match="labels must lie"):
        load_idx_dataset(bad, class_names=["a", "b"])


def test_load_mnist_tiny(tmp_path):
    write_idx_dir(tmp_path, np.random.default_rng(2), gz=True)
    ds = load_mnist(tmp_path, "test")
    assert ds.name == "mnist" and ds.class_names == [str(i) for i in range(10)] and len(ds) == 6


def test_fashion_mnist_env_and_missing(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "fm", np.random.default_rng(3), gz=True)
    monkeypatch.setenv("DRIFTING_FASHION_MNIST", str(tmp_path / "fm"))
    ds = load_fashion_mnist()
    assert len(ds) == 6 and ds.name == "fashion-mnist" and ds.class_names == list(FASHION_MNIST_CLASSES)
    with pytest.raises(FileNotFoundError, match="apt install dataset-fashion-mnist") as err:
        load_fashion_mnist(tmp_path / "missing")
    assert "pass root=<dir>" in str(err.value)
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist(split="validation")


def test_real_fashion_mnist(monkeypatch):
    """The Debian package dataset-fashion-mnist is installed here and in CI: never skip."""
    monkeypatch.delenv("DRIFTING_FASHION_MNIST", raising=False)
    train = load_fashion_mnist()
    assert Path(FASHION_MNIST_DEFAULT_ROOT).is_dir()
    assert len(train) == 60000 and train.shape == (28, 28, 1) and train.num_classes == 10
    assert train.labels[0] == 9 and train.class_names[9] == "Ankle boot"
    assert np.array_equal(np.bincount(train.labels), np.full(10, 6000))
    test = load_dataset("fashion-mnist", split="test")
    assert len(test) == 10000 and test.shape == (28, 28, 1)
    x = train.to_tensor(np.arange(4))
    assert x.shape == (4, 1, 28, 28) and x.min() == -1.0 and x.max() == 1.0


# ---------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------


def test_load_npz(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(5, 3, 3, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0], np.int32)
    np.savez(tmp_path / "a.npz", images=images, labels=labels, class_names=np.array(["x", "y", "z", "w"]))
    ds = load_npz(tmp_path / "a.npz")
    assert np.array_equal(ds.images, images) and ds.labels.dtype == np.int64 and ds.name == "a"
    assert ds.class_names == ["x", "y", "z", "w"] and ds.num_classes == 4
    np.savez_compressed(tmp_path / "gray.npz", images=images[..., 0], labels=labels)
    g = load_npz(tmp_path / "gray.npz")
    assert g.shape == (3, 3, 1) and g.class_names == ["0", "1", "2"]


def test_load_npz_errors(tmp_path):
    u8 = np.zeros((2, 2, 2), np.uint8)
    cases = {
        "nokey": (dict(images=u8), "missing key"),
        "float": (dict(images=u8.astype(np.float32), labels=np.zeros(2, int)),
                  "'images' must have dtype uint8"),
        "ndim": (dict(images=np.zeros((2, 2), np.uint8), labels=np.zeros(2, int)),
                 "'images' must have shape"),
        "labels": (dict(images=u8, labels=np.zeros(2)), "'labels' must be a 1-D integer"),
        "names": (dict(images=u8, labels=np.zeros(2, int), class_names=np.zeros(2)),
                  "'class_names' must be a 1-D string"),
        "pickle": (dict(images=u8, labels=np.zeros(2, int), class_names=np.array(["a", 1], dtype=object)),
                   "needs pickle"),
        "range": (dict(images=u8, labels=np.array([0, 3]), class_names=np.array(["a", "b"])),
                  "labels must lie"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ValueError, match=match):
            load_npz(tmp_path / f"{name}.npz")
    with pytest.raises(FileNotFoundError, match="npz file not found"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz")


# ---------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------


def save_png(path: Path, arr: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode if mode != "L" else None).convert(mode).save(path)


def test_image_folder_gray_and_rgb(tmp_path):
    g0 = np.full((4, 6), 10, np.uint8)
    g1 = np.full((4, 6), 200, np.uint8)
    save_png(tmp_path / "gray" / "cat" / "b.png", g0, "L")
    save_png(tmp_path / "gray" / "cat" / "a.png", g1, "L")
    save_png(tmp_path / "gray" / "dog" / "x.png", g0, "L")
    (tmp_path / "gray" / "dog" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "gray" / "dog" / "notes.txt").write_text("ignored")
    (tmp_path / "gray" / ".git").mkdir()
    ds = load_image_folder(tmp_path / "gray")
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.images.shape == (3, 4, 6, 1) and ds.images[0, 0, 0, 0] == 200  # a.png sorts first
    assert ds.name == "gray"
    rgb = load_image_folder(tmp_path / "gray", grayscale=False, size=(2, 3))
    assert rgb.images.shape == (3, 2, 3, 3) and np.all(rgb.images[0] == 200)

    colour = np.zeros((4, 6, 3), np.uint8)
    colour[..., 0] = 255
    save_png(tmp_path / "gray" / "dog" / "y.png", colour, "RGB")
    mixed = load_image_folder(tmp_path / "gray")  # any colour image -> RGB
    assert mixed.shape == (4, 6, 3) and mixed.images[3, 0, 0].tolist() == [255, 0, 0]
    forced = load_image_folder(tmp_path / "gray", grayscale=True, size=2)
    assert forced.shape == (2, 2, 1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(ValueError, match="no class sub-directories"):
        load_image_folder(tmp_path / "empty_root")
    save_png(tmp_path / "r" / "a" / "0.png", np.zeros((4, 4), np.uint8), "L")
    (tmp_path / "r" / "b").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        load_image_folder(tmp_path / "r")
    save_png(tmp_path / "r" / "b" / "0.png", np.zeros((5, 4), np.uint8), "L")
    with pytest.raises(ValueError, match="pass size="):
        load_image_folder(tmp_path / "r")
    assert load_image_folder(tmp_path / "r", size=3).shape == (3, 3, 1)
    for bad in (0, (2,), (2, 0), 2.5, True):
        with pytest.raises(ValueError, match="size must be"):
            load_image_folder(tmp_path / "r", size=bad)
    with pytest.raises(ValueError, match="grayscale must be None"):
        load_image_folder(tmp_path / "r", size=3, grayscale="yes")
    (tmp_path / "r" / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path / "r", size=3)


# ---------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------


def test_load_dataset_specs(tmp_path):
    write_idx_dir(tmp_path / "idx", np.random.default_rng(5), gz=True)
    ds = load_dataset(str(tmp_path / "idx"), split="test")
    assert len(ds) == 6 and ds.name == "idx"
    assert load_dataset(f"mnist:{tmp_path / 'idx'}").name == "mnist"
    assert load_dataset(f"fashion-mnist:{tmp_path / 'idx'}").name == "fashion-mnist"
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]))
    assert len(load_dataset(str(tmp_path / "d.npz"))) == 2
    save_png(tmp_path / "folder" / "a" / "0.png", np.zeros((3, 3), np.uint8), "L")
    assert load_dataset(str(tmp_path / "folder"), size=2).shape == (2, 2, 1)


def test_load_dataset_errors(tmp_path):
    for spec in ("imagenet", str(tmp_path / "missing.npz")):
        with pytest.raises(ValueError, match="accepted forms: 'fashion-mnist'"):
            load_dataset(spec)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_dataset(str(tmp_path / "x.csv"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="neither IDX files nor class sub-directories"):
        load_dataset(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="mnist:<dir>"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="spec must be a non-empty string"):
        load_dataset("")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("fashion-mnist", split="val")
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="single split"):
        load_dataset(str(tmp_path / "d.npz"), split="test")
