"""``drifting eval-classifier`` looks at its input file (and its --json path) before the minutes-long
classifier training or loading; unreadable .npz files are clear errors, not zipfile/numpy tracebacks."""

import os

import numpy as np
import pytest

from drifting.cli import main
from drifting.data.images import load_npz
from drifting.recipes.evaluate import load_samples


def _good(path, n=8):
    np.savez(path, images=np.zeros((n, 28, 28, 1), np.uint8), labels=np.arange(n) % 10)


def _truncated(path):
    _good(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path):
    path.write_bytes(os.urandom(2000))


def _empty(path):
    path.write_bytes(b"")


def _damaged_member(path):  # the zip directory is intact, the images' bytes are not (CRC mismatch)
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
             labels=np.arange(8) % 10)
    b = bytearray(path.read_bytes())
    b[1000:3000] = bytes(2000)
    path.write_bytes(bytes(b))


UNREADABLE = {"truncated": _truncated, "random bytes": _random_bytes, "empty": _empty,
              "damaged member": _damaged_member}


@pytest.fixture
def no_classifier(monkeypatch):
    """Any classifier training or loading fails the test: the input must be refused first."""
    import drifting.models.classifier as classifier
    import drifting.recipes.classify as classify

    def fail(*a, **k):
        pytest.fail("the classifier was trained or loaded before the input was checked")

    monkeypatch.setattr(classify, "train_classifier", fail)
    monkeypatch.setattr(classify, "cached_classifier", fail)
    monkeypatch.setattr(classifier.SmallCNN, "from_pretrained", classmethod(lambda cls, *a, **k: fail()))


def _run(capsys, *argv):
    rc = main(["eval-classifier", *argv, "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("make", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_an_unreadable_npz_is_refused_before_the_classifier(tmp_path, capsys, no_classifier, make,
                                                             drop_thread_note):
    f = tmp_path / "s.npz"
    make(f)
    rc, err = _run(capsys, str(f))
    err = drop_thread_note(err)  # on a busy machine --threads auto first says how many threads it took
    assert rc == 2 and err.startswith(f"drifting eval-classifier: error: {f}") and "np.savez" in err
    assert "allow_pickle" not in err  # numpy's advice to unpickle is not passed on


@pytest.mark.parametrize("make", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_load_samples_and_load_npz_name_the_unreadable_file(tmp_path, make):
    f = tmp_path / "s.npz"
    make(f)
    for load in (load_samples, load_npz):
        with pytest.raises(ValueError, match="s.npz"):
            load(f)


@pytest.mark.parametrize("images, hint", [
    (np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32),
     "np.round(images * 255).astype(np.uint8)"),
    (np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 1)),
     "np.round((images + 1) * 127.5).astype(np.uint8)"),
    (np.full((4, 28, 28, 1), 200, np.int64), "images.astype(np.uint8)"),
])
def test_images_of_another_dtype_say_how_to_convert_them(tmp_path, capsys, no_classifier, images, hint):
    f = tmp_path / "s.npz"
    np.savez(f, images=images, labels=np.arange(4))
    rc, err = _run(capsys, str(f))
    assert rc == 2 and "must be uint8" in err and hint in err


def test_a_missing_file_is_refused_before_the_classifier(tmp_path, capsys, no_classifier):
    rc, err = _run(capsys, str(tmp_path / "nothing.npz"))
    assert rc == 2 and "samples file not found" in err and "nothing.npz" in err


@pytest.mark.parametrize("arrays, why", [
    (dict(x=np.zeros(3)), "key 'images'"),
    (dict(images=np.zeros((4, 28, 28, 1), np.uint8), labels=np.arange(3)),
     "'labels' must be integers [N] with N = 4"),
    (dict(images=np.zeros((1, 28, 28, 1), np.uint8), labels=np.arange(1)), "at least 2 images"),
])
def test_wrong_contents_are_refused_before_the_classifier(tmp_path, capsys, no_classifier, arrays, why):
    f = tmp_path / "s.npz"
    np.savez(f, **arrays)
    rc, err = _run(capsys, str(f))
    assert rc == 2 and why in err


def test_a_json_path_that_is_a_directory_is_refused_before_the_classifier(tmp_path, capsys, no_classifier):
    f = tmp_path / "s.npz"
    _good(f)
    rc, err = _run(capsys, str(f), "--json", str(tmp_path))
    assert rc == 2 and "is a directory" in err


def test_a_json_path_under_a_file_is_refused_before_the_classifier(tmp_path, capsys, no_classifier):
    f = tmp_path / "s.npz"
    _good(f)
    rc, err = _run(capsys, str(f), "--json", str(f / "report.json"))  # its folder would be a file
    assert rc == 2 and "cannot create its folder" in err
