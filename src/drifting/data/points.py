"""Point-cloud data for the toy studies.

Three ways to get points:

* :func:`sample_target` draws fresh samples from a built-in 2-D target
  (see :data:`TARGETS`), with all randomness taken from a ``torch.Generator``
  so that seeded sampling is reproducible.
* :func:`load_points` reads an ``[n, d]`` array from a ``.npy`` or ``.csv`` file
  and checks it thoroughly (shape, dtype, finiteness), with errors that name the
  file, say what is wrong and what is allowed.
* :func:`resolve_points` accepts either of the two (a target name or a path),
  which is what a command line ``--data`` option wants.

:class:`PointSampler` (a fixed data set, minibatches without replacement within
an epoch) and :class:`TargetSampler` (fresh samples from a built-in target) share
a ``sample(k, generator)`` method so a trainer can use either.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TARGETS",
    "sample_target",
    "load_points",
    "resolve_points",
    "PointSampler",
    "TargetSampler",
]

TARGETS: tuple[str, ...] = ("bimodal", "8gaussians", "checkerboard", "swissroll", "moons", "ring")
"""Names of the built-in 2-D targets accepted by :func:`sample_target`."""

_ALIASES: dict[str, str] = {"8-gaussians": "8gaussians", "two-moons": "moons", "swiss-roll": "swissroll"}

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".npy", ".csv")


# ---------------------------------------------------------------------------
# built-in targets
# ---------------------------------------------------------------------------


def _canonical_target(name: str) -> str | None:
    """Return the canonical target name for ``name`` (case-insensitive, aliases allowed), or None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in TARGETS else None


def _allowed_names() -> str:
    return ", ".join(TARGETS) + " (aliases: " + ", ".join(_ALIASES) + ")"


def _randn(n: int, d: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64)  # [n, d]


def _rand(n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)  # [n]


def _bimodal(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Equal-weight mixture of N((-2,-2), 0.5^2 I) and N((2,2), 0.5^2 I)."""
    sign = torch.randint(0, 2, (n, 1), generator=g).to(torch.float64) * 2 - 1  # [n, 1], +-1
    return sign * 2.0 + 0.5 * _randn(n, 2, g)  # [n, 2]


def _eight_gaussians(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Equal-weight mixture of 8 Gaussians (std 0.15) evenly spaced on a circle of radius 2."""
    k = torch.randint(0, 8, (n,), generator=g).to(torch.float64)  # [n]
    angle = k * (2 * math.pi / 8)  # [n]
    centers = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # [n, 2]
    return centers + 0.15 * _randn(n, 2, g)  # [n, 2]


def _checkerboard(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Uniform on the 8 "black" squares of a 4x4 checkerboard covering [-2, 2]^2."""
    x = _rand(n, g) * 4 - 2  # [n], in [-2, 2)
    # y in [0, 1) or [-2, -1); shifting up by one on odd columns gives the checker pattern
    y = _rand(n, g) - torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2  # [n]
    y = y + torch.remainder(torch.floor(x), 2)  # [n]
    return torch.stack([x, y], dim=1)  # [n, 2]


def _swissroll(n: int, g: torch.Generator | None) -> torch.Tensor:
    """sklearn-style 2-D swiss roll t (cos t, sin t), t in [1.5 pi, 4.5 pi], scaled by 1/7, noise 0.05."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))  # [n]
    xy = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 7.0  # [n, 2], about [-1.4, 2]^2
    return xy + 0.05 * _randn(n, 2, g)  # [n, 2]


def _moons(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Two interleaved half circles (sklearn ``make_moons``, noise 0.05), centred and scaled to x in ~[-2,
    2]."""
    upper = torch.randint(0, 2, (n,), generator=g).bool()  # [n], which moon
    theta = math.pi * _rand(n, g)  # [n]
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))  # [n]
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))  # [n]
    xy = torch.stack([x, y], dim=1) + 0.05 * _randn(n, 2, g)  # [n, 2], x in [-1, 2], y in [-0.5, 1]
    center = torch.tensor([0.5, 0.25], dtype=torch.float64)
    return (xy - center) * (4.0 / 3.0)  # [n, 2], x in ~[-2, 2], y in ~[-1, 1]


def _ring(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Circle of radius 2 with Gaussian radial noise of std 0.05."""
    angle = 2 * math.pi * _rand(n, g)  # [n]
    radius = 2.0 + 0.05 * _randn(n, 1, g)[:, 0]  # [n]
    return radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # [n, 2]


_SAMPLERS = {
    "bimodal": _bimodal,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "moons": _moons,
    "ring": _ring,
}


def _check_count(n: object, arg: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{arg} must be a positive integer, got {n!r}")
    return int(n)


def sample_target(name: str, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` points from the built-in 2-D target ``name``.

    Args:
        name: one of :data:`TARGETS` (case-insensitive); the aliases ``"8-gaussians"``,
            ``"two-moons"`` and ``"swiss-roll"`` are accepted too.
        n: number of points (positive integer).
        generator: a CPU ``torch.Generator`` that supplies all randomness; the same seed
            gives the same points. ``None`` uses torch's global generator.

    Returns:
        ``[n, 2]`` float32 tensor on the CPU.

    Targets (coordinates of order 1-4):
        * ``bimodal``: equal mixture of two Gaussians at (-2, -2) and (2, 2), std 0.5.
        * ``8gaussians``: 8 Gaussians on a circle of radius 2, std 0.15.
        * ``checkerboard``: uniform on 8 of the 16 squares of a 4x4 board on [-2, 2]^2.
        * ``swissroll``: 2-D swiss roll scaled to roughly [-2, 2]^2, noise std 0.05.
        * ``moons``: two interleaved half circles, noise 0.05, centred, x in ~[-2, 2].
        * ``ring``: circle of radius 2 with radial noise std 0.05.
    """
    key = _canonical_target(name)
    if key is None:
        raise ValueError(f"name={name!r} is not a built-in target; allowed names: {_allowed_names()}")
    n = _check_count(n)
    return _SAMPLERS[key](n, generator).to(torch.float32).contiguous()  # [n, 2]


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(
                f"{path}: the file holds an object array or pickled data, which is not loaded "
                "(allow_pickle=False); save a plain numeric array with np.save(path, "
                "array.astype(np.float32))"
            ) from exc
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    if not isinstance(arr, np.ndarray):  # e.g. an .npz archive saved under a .npy name
        if hasattr(arr, "close"):
            arr.close()
        raise ValueError(f"{path}: expected a single array saved with np.save, got {type(arr).__name__}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(
            f"{path}: non-numeric array dtype {arr.dtype}; allowed are integer or floating-point arrays"
        )
    return arr


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _load_csv(path: Path) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file, cannot read it as CSV") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: the file is empty; need at least 2 rows of comma-separated numbers")
    fields = [f.strip() for f in lines[0].split(",")]
    if not any(_is_number(f) for f in fields):
        lines = lines[1:]  # a header row of column names
    if not lines:
        raise ValueError(f"{path}: the file holds only a header row; need at least 2 rows of numbers")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except ValueError as exc:
        raise ValueError(
            f"{path}: non-numeric or ragged content ({exc}); a .csv must hold comma-separated numbers, "
            "the same count on every row, with at most one header row of column names"
        ) from exc
    return arr


def load_points(path: str | os.PathLike) -> torch.Tensor:
    """Load a point cloud ``[n, d]`` from a ``.npy`` or ``.csv`` file.

    * ``.npy``: a 2-D numeric array ``[n, d]`` (a 1-D array is taken as ``[n, 1]``).
      Loaded with ``allow_pickle=False``; object arrays are rejected.
    * ``.csv``: comma-separated numbers, one point per row; a single first row of
      non-numeric column names is skipped as a header. Blank lines are ignored.

    The data must have at least 2 rows, at least 1 column and only finite values.

    Returns:
        ``[n, d]`` float32 tensor.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: anything else wrong with the file; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"points file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    ext = path.suffix.lower()
    if ext == ".npy":
        arr = _load_npy(path)
    elif ext == ".csv":
        arr = _load_csv(path)
    else:
        raise ValueError(
            f"{path}: unsupported file extension {path.suffix!r}; allowed: {', '.join(SUPPORTED_EXTENSIONS)}"
        )

    if arr.ndim == 1:
        arr = arr[:, None]  # [n, 1]
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 1-D or 2-D array [n, d], got {arr.ndim}-D "
                         f"with shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{path}: need at least 2 rows (points), got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{path}: need at least 1 column, got shape {arr.shape}")

    arr = arr.astype(np.float64, copy=False)  # [n, d]
    bad = ~np.isfinite(arr).all(axis=1)  # [n]
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{path}: row {row} (0-based, header excluded) holds NaN or inf ({arr[row].tolist()}); "
            f"{int(bad.sum())} row(s) in all; only finite values are allowed"
        )
    with np.errstate(over="ignore"):
        out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))  # [n, d]
    bad32 = ~torch.isfinite(out).all(dim=1)
    if bad32.any():
        row = int(torch.nonzero(bad32)[0, 0])
        raise ValueError(f"{path}: row {row} (0-based, header excluded) overflows float32 "
                         f"({arr[row].tolist()})")
    return out


def resolve_points(
    data: str | os.PathLike, n: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, str]:
    """Turn a ``--data`` value into points.

    Args:
        data: a built-in target name (see :data:`TARGETS`) or a path to a ``.npy``/``.csv`` file;
            a target name wins over a file of the same name in the working directory.
        n: number of points to sample from a built-in target (ignored for files, whose rows are all used).
        generator: randomness for target sampling.

    Returns:
        ``(points, description)``: ``[n, 2]`` for a target or ``[rows, d]`` for a file (float32),
        and a short human-readable description of where the points came from.
    """
    if isinstance(data, str) and _canonical_target(data) is not None:
        key = _canonical_target(data)
        pts = sample_target(key, n, generator=generator)  # [n, 2]
        return pts, f"target '{key}' ({pts.shape[0]} samples)"
    path = Path(data)
    if path.is_file():
        pts = load_points(path)  # [rows, d]
        return pts, f"file '{path}' ({pts.shape[0]} points, dim {pts.shape[1]})"
    raise ValueError(
        f"data={str(data)!r} is neither an existing file (.npy or .csv) nor one of the built-in targets: "
        f"{_allowed_names()}"
    )


# ---------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------


class PointSampler:
    """Random minibatches from a fixed data set ``[n, d]``.

    Within an epoch, batches are drawn without replacement from a random permutation;
    when fewer than ``k`` unused points remain, the remainder is dropped and a new
    epoch starts with a fresh permutation (so no batch holds the same row twice).
    If ``k > n`` a batch cannot be drawn without replacement, so it is drawn *with*
    replacement (uniformly, independently of the epoch state).
    """

    def __init__(self, data: torch.Tensor) -> None:
        data = torch.as_tensor(data)
        if data.ndim != 2 or data.shape[0] < 1:
            raise ValueError(f"data must be a 2-D tensor [n, d] with n >= 1, got shape {tuple(data.shape)}")
        self.data = data  # [n, d]
        self.epoch = 0
        self._perm: torch.Tensor | None = None
        self._pos = 0

    @property
    def n(self) -> int:
        """Number of points in the data set."""
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the points."""
        return int(self.data.shape[1])

    def __len__(self) -> int:
        return self.n

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return a minibatch ``[k, d]`` (a copy of rows of ``data``)."""
        k = _check_count(k, "k")
        if k > self.n:
            idx = torch.randint(0, self.n, (k,), generator=generator)  # [k], with replacement
        else:
            if self._perm is None or self._pos + k > self.n:
                self._perm = torch.randperm(self.n, generator=generator)  # [n]
                self._pos = 0
                self.epoch += 1
            idx = self._perm[self._pos : self._pos + k]  # [k]
            self._pos += k
        return self.data[idx.to(self.data.device)]  # [k, d]


class TargetSampler:
    """Fresh samples from a built-in target each call.

    Has the same ``sample(k, generator)`` method as :class:`PointSampler`, so a trainer can use either.
    """

    dim = 2

    def __init__(self, name: str) -> None:
        key = _canonical_target(name)
        if key is None:
            raise ValueError(f"name={name!r} is not a built-in target; allowed names: {_allowed_names()}")
        self.name = key

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``k`` fresh points ``[k, 2]`` (float32)."""
        return sample_target(self.name, k, generator=generator)
