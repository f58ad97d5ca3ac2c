"""Dimensionality reduction and state abstractions, in scikit-learn style (`fit` / `predict`).

Every abstraction maps activation vectors to integer abstract states `0..n_states_ - 1`; its size
parameter (`size_param`) is what the automatic choice of the number of states sweeps.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from .._validate import positive_int
from ..errors import ConfigError, InputError


def _check_x(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(f"expected a non-empty [n_samples, n_features] array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("activations contain NaN or infinite values")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"expected {dim} features, got {arr.shape[1]}")
    return arr


def _check_fitted(est: BaseEstimator, attr: str) -> None:
    if not hasattr(est, attr):
        raise InputError(f"{type(est).__name__} is not fitted yet; call fit first")


AUTO_MAX = 256


class Reducer(TransformerMixin, BaseEstimator):
    """PCA to `n_components` dimensions (an int) or to a fraction of explained variance (a float
    in (0, 1)); `None` keeps every dimension; `"auto"` keeps every principal axis up to 256 (a
    rotation: distances are kept, so are the rare states of large automata, which a cut to the
    top-variance axes would merge). Fitted on at most `max_fit` rows."""

    def __init__(self, n_components: int | float | None = 10, max_fit: int = 20000, seed: int = 0):
        self.n_components = n_components
        self.max_fit = max_fit
        self.seed = seed

    def fit(self, x: np.ndarray, y: object = None) -> Reducer:
        x = _check_x(x)
        nc = self.n_components
        if isinstance(nc, str):
            if nc != "auto":
                raise ConfigError(f"n_components must be an int, a float, None or 'auto', got {nc!r}")
        elif nc is not None:
            if isinstance(nc, float) and not isinstance(nc, bool):
                if not 0 < nc < 1:
                    raise ConfigError(f"a float n_components is a variance fraction in (0, 1), got {nc}")
            else:
                nc = positive_int(nc, "n_components", numpy=True)
        if len(x) > self.max_fit:
            x = x[np.random.default_rng(self.seed).choice(len(x), self.max_fit, replace=False)]
        self.n_features_in_ = x.shape[1]
        limit = min(x.shape)
        if nc is None or (isinstance(nc, int) and nc >= x.shape[1]):
            self.pca_ = None
            self.n_components_ = x.shape[1]
            self.explained_variance_ratio_ = np.ones(1)
            return self
        if nc == "auto":
            # a rotation onto the principal axes keeping up to AUTO_MAX of them: distances (and
            # so rare states, whose variance is small) are kept, the figures get the top axes
            self.pca_ = PCA(n_components=min(limit, AUTO_MAX), random_state=self.seed).fit(x)
        else:
            self.pca_ = PCA(n_components=min(nc, limit) if isinstance(nc, int) else nc, random_state=self.seed)
            self.pca_.fit(x)
        self.n_components_ = int(self.pca_.n_components_)
        self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        _check_fitted(self, "n_features_in_")
        x = _check_x(x, self.n_features_in_)
        return x if self.pca_ is None else self.pca_.transform(x)


class MetricReducer(Reducer):
    """A linear map under which Euclidean distance is the distance in `metric` (a PSD matrix
    `[d, d]`, e.g. `sensitivity_metric` in `fsm_probe.extraction.search`): the rows are centred
    and rotated onto the metric's eigenvectors, each axis scaled by the square root of its
    eigenvalue plus `floor` times their mean (so no direction is dropped entirely), the whole
    rescaled to the input's total variance. `n_components` as in `Reducer` keeps the most
    heavily weighted axes ("auto" and None keep every one)."""

    def __init__(
        self, metric: np.ndarray | None = None, n_components: int | float | str | None = "auto",
        floor: float = 0.01, max_fit: int = 20000, seed: int = 0,
    ):
        super().__init__(n_components=n_components, max_fit=max_fit, seed=seed)
        self.metric = metric
        self.floor = floor

    def fit(self, x: np.ndarray, y: object = None) -> MetricReducer:
        x = _check_x(x)
        m = np.asarray(self.metric, dtype=np.float64)
        if m.shape != (x.shape[1], x.shape[1]) or not np.isfinite(m).all():
            raise InputError(f"metric must be a finite [{x.shape[1]}, {x.shape[1]}] matrix, got shape {m.shape}")
        if len(x) > self.max_fit:
            x = x[np.random.default_rng(self.seed).choice(len(x), self.max_fit, replace=False)]
        lam, vec = np.linalg.eigh((m + m.T) / 2)
        lam, vec = np.clip(lam[::-1], 0, None), vec[:, ::-1]
        weights = np.sqrt(lam + self.floor * max(lam.mean(), 1e-12))
        self.n_features_in_ = x.shape[1]
        self.pca_ = None
        self.mean_ = x.mean(0)
        z = (x - self.mean_) @ vec * weights
        var = z.var(0)
        nc = self.n_components
        keep = len(var)
        if isinstance(nc, float) and not isinstance(nc, bool):
            if not 0 < nc < 1:
                raise ConfigError(f"a float n_components is a variance fraction in (0, 1), got {nc}")
            keep = int(np.searchsorted(np.cumsum(var) / max(var.sum(), 1e-300), nc) + 1)
        elif isinstance(nc, int | np.integer) and not isinstance(nc, bool):
            keep = min(positive_int(nc, "n_components", numpy=True), keep)
        elif nc is not None and nc != "auto":
            raise ConfigError(f"n_components must be an int, a float, None or 'auto', got {nc!r}")
        scale = np.sqrt(((x - self.mean_) ** 2).sum(1).mean() / max(var.sum(), 1e-300))
        self.components_ = vec[:, :keep] * (weights[:keep] * scale)
        self.n_components_ = keep
        self.explained_variance_ratio_ = var[:keep] / max(var.sum(), 1e-300)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        _check_fitted(self, "components_")
        x = _check_x(x, self.n_features_in_)
        return (x - self.mean_) @ self.components_


class Abstraction(ClusterMixin, BaseEstimator):
    """Base class: `fit(X)` sets `n_states_` and `cluster_centers_`; `predict(X)` gives states."""

    size_param = "n_states"

    def with_size(self, size: int) -> Abstraction:
        """A fresh copy with `size_param` set to `size`."""
        est = self.__class__(**self.get_params())
        est.set_params(**{self.size_param: size})
        return est

    def predict(self, x: np.ndarray) -> np.ndarray:
        _check_fitted(self, "cluster_centers_")
        x = _check_x(x, self.cluster_centers_.shape[1])
        return _nearest(x, self.cluster_centers_)

    def fit_predict(self, x: np.ndarray, y: object = None) -> np.ndarray:
        return self.fit(x).labels_


def _nearest(x: np.ndarray, centers: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    c2 = (centers**2).sum(1)
    for s in range(0, len(x), chunk):
        block = x[s : s + chunk]
        out[s : s + chunk] = np.argmin(c2[None, :] - 2 * block @ centers.T, axis=1)
    return out


def _centers(x: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    sums = np.zeros((n, x.shape[1]))
    np.add.at(sums, labels, x)
    return sums / np.maximum(counts, 1)[:, None]


_UNIQUE_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _unique_rows(x: np.ndarray, decimals: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows (after rounding), the inverse index and the multiplicities (cached: the
    sweep over cluster counts asks again for the same data)."""
    r = np.ascontiguousarray(np.round(x, decimals) + 0.0)  # + 0.0: -0.0 and 0.0 are one value
    key = (r.shape, decimals, hashlib.sha1(r.tobytes()).hexdigest())
    if key not in _UNIQUE_CACHE:
        rows = r.view(np.dtype((np.void, r.dtype.itemsize * r.shape[1]))).reshape(-1)
        _, first, inverse, counts = np.unique(rows, return_index=True, return_inverse=True, return_counts=True)
        if len(_UNIQUE_CACHE) > 8:
            _UNIQUE_CACHE.clear()
        _UNIQUE_CACHE[key] = (first, inverse.reshape(-1), counts)
    first, inverse, counts = _UNIQUE_CACHE[key]
    return x[first], inverse, counts


class KMeansAbstraction(Abstraction):
    """k-means (Hou & Zhou 2018) with `n_states` clusters (fewer if there are fewer points).

    Rows are first merged into their distinct values (rounded to `decimals`), weighted by
    multiplicity: the states of a well-trained or compiled network repeat, so k-means at large
    k runs on few points. With more than `minibatch_above` distinct rows it is MiniBatchKMeans.
    """

    def __init__(
        self, n_states: int = 8, n_init: int = 1, seed: int = 0, decimals: int = 4,
        minibatch_above: int = 50000,
    ):
        self.n_states = n_states
        self.n_init = n_init
        self.seed = seed
        self.decimals = decimals
        self.minibatch_above = minibatch_above

    def fit(self, x: np.ndarray, y: object = None) -> KMeansAbstraction:
        k = positive_int(self.n_states, "n_states", numpy=True)
        x = _check_x(x)
        uniq, inverse, counts = _unique_rows(x, self.decimals)
        k = min(k, len(uniq))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if len(uniq) > self.minibatch_above:
                km = MiniBatchKMeans(
                    k, n_init=max(1, self.n_init), random_state=self.seed, batch_size=4096,
                    max_iter=100,
                ).fit(uniq, sample_weight=counts)
            else:
                km = KMeans(k, n_init=self.n_init, random_state=self.seed, max_iter=100).fit(
                    uniq, sample_weight=counts
                )
        labels = km.labels_[inverse]
        present = np.unique(labels)
        remap = np.full(k, -1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        self.labels_ = remap[labels]
        self.cluster_centers_ = km.cluster_centers_[present]
        self.n_states_ = len(present)
        self.n_unique_ = len(uniq)
        return self


class GMMAbstraction(Abstraction):
    """Gaussian mixture with `n_states` diagonal components; states are the most likely component."""

    def __init__(self, n_states: int = 8, covariance_type: str = "diag", seed: int = 0):
        self.n_states = n_states
        self.covariance_type = covariance_type
        self.seed = seed

    def fit(self, x: np.ndarray, y: object = None) -> GMMAbstraction:
        k = positive_int(self.n_states, "n_states", numpy=True)
        if self.covariance_type not in ("full", "tied", "diag", "spherical"):
            raise ConfigError(f"unknown covariance_type {self.covariance_type!r}")
        x = _check_x(x)
        k = min(k, len(_unique_rows(x)[0]))
        gmm = GaussianMixture(
            k, covariance_type=self.covariance_type, random_state=self.seed, reg_covar=1e-4,
            max_iter=100,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gmm_ = gmm.fit(x)
        labels = self.gmm_.predict(x)
        present = np.unique(labels)
        remap = np.full(k, -1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        self.component_map_ = remap
        self.labels_ = remap[labels]
        self.n_states_ = len(present)
        self.cluster_centers_ = _centers(x, self.labels_, self.n_states_)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        _check_fitted(self, "gmm_")
        x = _check_x(x, self.cluster_centers_.shape[1])
        labels = self.component_map_[self.gmm_.predict(x)]
        missing = labels < 0
        if missing.any():
            labels[missing] = _nearest(x[missing], self.cluster_centers_)
        return labels


class AgglomerativeAbstraction(Abstraction):
    """Agglomerative clustering (Ward by default) cut at `n_states` clusters. Rows are first
    grouped into at most `max_points` k-means micro-clusters, so rare but distant states (the
    initial one) keep their own leaf; the tree is cached across sizes for the same data."""

    _trees: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __init__(self, n_states: int = 8, linkage: str = "ward", max_points: int = 256, seed: int = 0):
        self.n_states = n_states
        self.linkage = linkage
        self.max_points = max_points
        self.seed = seed

    def _tree(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (x.shape, hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest(),
               self.linkage, self.max_points, self.seed)
        if key not in self._trees:
            m = min(positive_int(self.max_points, "max_points", numpy=True), len(_unique_rows(x)[0]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                km = KMeans(m, n_init=1, random_state=self.seed, max_iter=50).fit(x)
            micro = km.labels_.astype(np.int64)
            centres = _centers(x, micro, m)
            tree = linkage(centres, method=self.linkage) if m > 1 else np.zeros((0, 4))
            if len(self._trees) > 8:
                self._trees.clear()
            self._trees[key] = (micro, centres, tree)
        return self._trees[key]

    def fit(self, x: np.ndarray, y: object = None) -> AgglomerativeAbstraction:
        k = positive_int(self.n_states, "n_states", numpy=True)
        if self.linkage not in ("ward", "average", "complete", "single"):
            raise ConfigError(f"unknown linkage {self.linkage!r}")
        x = _check_x(x)
        micro, centres, tree = self._tree(x)
        if len(centres) == 1:
            cut = np.zeros(1, dtype=np.int64)
        else:
            cut = fcluster(tree, t=min(k, len(centres)), criterion="maxclust").astype(np.int64) - 1
        self.labels_ = cut[micro]
        self.n_states_ = int(cut.max()) + 1
        self.cluster_centers_ = _centers(x, self.labels_, self.n_states_)
        return self


class GridAbstraction(Abstraction):
    """DeepStellar's grid: the first `n_dims` coordinates, each cut into `n_bins` equal intervals
    over the fitted range; occupied cells are the states, unseen cells go to the nearest one."""

    size_param = "n_bins"

    def __init__(self, n_bins: int = 10, n_dims: int = 3):
        self.n_bins = n_bins
        self.n_dims = n_dims

    def _cells(self, x: np.ndarray) -> np.ndarray:
        z = (x[:, : self.dims_] - self.low_) / self.width_
        return np.clip(np.floor(z * self.n_bins), 0, self.n_bins - 1).astype(np.int64)

    def fit(self, x: np.ndarray, y: object = None) -> GridAbstraction:
        positive_int(self.n_bins, "n_bins", numpy=True)
        positive_int(self.n_dims, "n_dims", numpy=True)
        x = _check_x(x)
        self.dims_ = min(self.n_dims, x.shape[1])
        self.n_features_in_ = x.shape[1]
        self.low_ = x[:, : self.dims_].min(0)
        self.width_ = np.maximum(x[:, : self.dims_].max(0) - self.low_, 1e-9)
        cells = self._cells(x)
        occupied, labels = np.unique(cells, axis=0, return_inverse=True)
        self.cells_ = occupied
        self.cell_index_ = {tuple(c): i for i, c in enumerate(occupied.tolist())}
        self.labels_ = labels.reshape(-1).astype(np.int64)
        self.n_states_ = len(occupied)
        self.cluster_centers_ = _centers(x, self.labels_, self.n_states_)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        _check_fitted(self, "cells_")
        x = _check_x(x, self.n_features_in_)
        cells = self._cells(x)
        out = np.array([self.cell_index_.get(tuple(c), -1) for c in cells.tolist()], dtype=np.int64)
        missing = out < 0
        if missing.any():
            centres = (self.cells_ + 0.5).astype(np.float64)
            out[missing] = _nearest(cells[missing] + 0.5, centres)
        return out


ABSTRACTIONS: dict[str, type[Abstraction]] = {
    "kmeans": KMeansAbstraction,
    "gmm": GMMAbstraction,
    "agglomerative": AgglomerativeAbstraction,
    "grid": GridAbstraction,
}


def make_abstraction(method: str, **params: object) -> Abstraction:
    """An abstraction by name: kmeans, gmm, agglomerative or grid."""
    if method not in ABSTRACTIONS:
        raise ConfigError(f"unknown abstraction {method!r}; expected one of {', '.join(ABSTRACTIONS)}")
    try:
        return ABSTRACTIONS[method](**params)
    except TypeError as e:
        raise ConfigError(f"bad parameters for {method}: {e}") from None
