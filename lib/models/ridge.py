"""Cross-validated ridge regression from voxels to an embedding: closed form, one decomposition for every alpha,
leave-one-out or grouped K-fold, optionally one alpha per target."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupKFold, KFold

from lib import fileio, runtime

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))


class EncoderError(ValueError):
    """Bad input to an encoder (shapes, parameters, files)."""


# ================================================================================================================
# ridge


def _eigh(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric matrix. On CPU LAPACK's divide and conquer (syevd) overwrites ``g``
    with the eigenvectors (peak: the matrix and a workspace of twice its size); on GPU torch's."""
    if g.device.type == "cpu":
        # g is symmetric, so its transpose is the Fortran-ordered matrix LAPACK wants, without a copy
        w, v = scipy.linalg.eigh(g.numpy().T, overwrite_a=True, driver="evd", check_finite=False)
        return torch.from_numpy(w), torch.from_numpy(v)
    return torch.linalg.eigh(g)


def _add_gram(g: torch.Tensor, a: torch.Tensor, outer: bool, scale: float = 1.0) -> None:
    """g += scale * (a a' if ``outer`` else a' a), in place. On CPU BLAS's syrk writes only the upper triangle
    of ``g`` (half the work of a full product), which is the triangle :func:`_eigh` reads; call
    :func:`_symmetrise` before reading anything else. On GPU the full product."""
    if g.device.type != "cpu":
        if outer:
            g.addmm_(a, a.T, alpha=scale)
        else:
            g.addmm_(a.T, a, alpha=scale)
        return

    syrk = scipy.linalg.get_blas_funcs("syrk", dtype=g.numpy().dtype)
    c = g.numpy().T  # Fortran view; its lower triangle is g's upper one
    # a is C-ordered, so a.T is the Fortran matrix A; outer: A'A = a a', else A A' = a' a
    out = syrk(scale, np.ascontiguousarray(a.numpy()).T, beta=1.0, c=c, trans=int(outer), lower=1,
               overwrite_c=1)  # fmt: skip
    if not np.shares_memory(out, c):
        c[...] = out


def _symmetrise(g: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """Copy the upper triangle of a square ``g`` onto its lower one, in place, in row blocks."""
    for lo in range(0, len(g), block):
        hi = min(len(g), lo + block)
        g[lo:hi, :lo] = g[:lo, lo:hi].T
        d = g[lo:hi, lo:hi]
        d.copy_(torch.triu(d) + torch.triu(d, 1).T)
    return g


def _take(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a[rows], as a view (no copy) when ``rows`` is a contiguous ascending run."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return a[rows[0] : rows[-1] + 1]
    return a[rows]


#: elements (not bytes) of one chunk's largest temporary: rows x max(features, targets)
_CHUNK_ELEMENTS = 2**25


def _group_blocks(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order putting each group's rows together, start of each group in that order, plus the end)."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    return order, np.r_[starts, len(g)]


class _Rows:
    """Chunked reads of a subset of the rows of X and Y, centred on their means, in one dtype and device."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None, dtype: torch.dtype,
                 device: torch.device, chunk: int, fit_intercept: bool):  # fmt: skip
        self.dtype, self.device, self.intercept = dtype, device, fit_intercept
        rows = np.arange(len(x)) if rows is None else rows
        self.rows, self.n, self.p = rows, len(rows), x.shape[1]
        self.chunk = max(1, min(chunk, _CHUNK_ELEMENTS // max(self.p, y.shape[1])))
        zeros = lambda k: torch.zeros(k, dtype=dtype, device=device)  # noqa: E731
        self.x_mean = self._mean(x, rows) if fit_intercept else zeros(self.p)
        self.y_mean = self._mean(y, rows) if fit_intercept else zeros(y.shape[1])

    def _dual_gram(self, x: np.ndarray) -> torch.Tensor:
        """Xc Xc' (upper triangle on CPU), from column blocks: no n x p copy of X."""
        k = torch.zeros(self.n, self.n, dtype=self.dtype, device=self.device)
        xr = _take(x, self.rows)
        for lo, hi in _spans(self.p, max(1, _CHUNK_ELEMENTS // self.n), None):
            xc = torch.as_tensor(np.asarray(xr[:, lo:hi]), device=self.device).to(self.dtype)
            _add_gram(k, (xc - self.x_mean[lo:hi]).contiguous(), outer=True)
        return k

    def _rows(self, a: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(_take(a, rows)), device=self.device).to(self.dtype)

    def _mean(self, a: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        total = torch.zeros(a.shape[1], dtype=torch.float64, device=self.device)
        for i in range(0, len(rows), self.chunk):
            total += self._rows(a, rows[i : i + self.chunk]).sum(0, dtype=torch.float64)
        return (total / len(rows)).to(self.dtype)

    def _chunks(self, x: np.ndarray, y: np.ndarray, positions: np.ndarray, bounds: np.ndarray | None = None):
        """Centred (x, y) chunks of the rows at ``positions`` (indices into self.rows), cut only at ``bounds``."""
        for lo, hi in _spans(len(positions), self.chunk, bounds):
            r = self.rows[positions[lo:hi]]
            yield self._rows(x, r) - self.x_mean, self._rows(y, r) - self.y_mean


class _Decomposition(_Rows):
    """Centred ridge of X -> Y for any alpha from one eigen-decomposition.

    primal (p <= n): Xc'Xc = V diag(s) V', coef(a) = V diag(1/(s+a)) V'Xc'Yc.
    dual (p > n): XcXc' = U diag(s) U', coef(a) = Xc'U diag(1/(s+a)) U'Yc.
    Everything runs in ``dtype``; where the regularised matrix is ill-conditioned the final coefficients get
    one step of iterative refinement (:meth:`coef` with ``x``), so float32 fits match a float64 solution to
    about 1e-5.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None, dtype: torch.dtype,
                 device: torch.device, chunk: int, fit_intercept: bool,
                 gram: torch.Tensor | None = None):  # fmt: skip
        """``gram``: the centred Gram matrix of these rows (p x p or n x n), when the caller has it
        (:class:`_FoldGrams`); it is overwritten by the eigenvectors on CPU."""
        super().__init__(x, y, rows, dtype, device, chunk, fit_intercept)
        rows = self.rows
        self.primal = self.p <= self.n
        if self.primal:
            g = gram
            if g is None:
                g = torch.zeros(self.p, self.p, dtype=dtype, device=device)
                for xc, _ in self._chunks(x, y, np.arange(self.n)):
                    _add_gram(g, xc, outer=False)
                xc = None  # the last chunk must not live through the eigen-decomposition's peak
            s, self.v = _eigh(g)  # g is overwritten on CPU
            del g
            self.v = self.v.to(device)
            # Xc'Yc after the decomposition, so that it does not add to its peak (Gram matrix plus LAPACK's
            # workspace of twice its size); the extra pass over X costs about T / p of the Gram matrix's work
            self.xty = torch.zeros(self.p, y.shape[1], dtype=torch.float64, device=device)
            for xc, yc in self._chunks(x, y, np.arange(self.n)):
                self.xty += (xc.T @ yc).double()
            self.q = self.v.T @ self.xty.to(dtype)  # (p, T)
        else:
            k = self._dual_gram(x) if gram is None else gram
            s, self.u = _eigh(k)  # k is overwritten on CPU
            del k
            self.u = self.u.to(device)
            self.yc = self._rows(y, rows) - self.y_mean
            self.q = self.u.T @ self.yc  # (n, T)
        self.s = s.to(device, dtype).clamp_min(0)

    def _xt(self, x: np.ndarray, c: torch.Tensor) -> torch.Tensor:
        """Xc' c (p x T), reading X in row chunks."""
        out = torch.zeros(self.p, c.shape[1], dtype=torch.float64, device=self.device)
        for lo, hi in _spans(self.n, self.chunk, None):
            out += ((self._rows(x, self.rows[lo:hi]) - self.x_mean).T @ c[lo:hi]).double()
        return out

    def _xw(self, x: np.ndarray, w: torch.Tensor) -> torch.Tensor:
        """Xc w (n x T), reading X in row chunks."""
        return torch.cat(
            [
                (self._rows(x, self.rows[lo:hi]) - self.x_mean) @ w
                for lo, hi in _spans(self.n, self.chunk, None)
            ]
        )

    def coef(self, alphas: torch.Tensor, x: np.ndarray, refine: int = 0) -> torch.Tensor:
        """(p, T) coefficients; ``alphas`` is (T,) (one per target); ``x`` is the data of the fit. ``refine``
        steps of iterative refinement: the residual of the normal equations (products in ``dtype``, summed in
        float64), corrected through the decomposition. One step takes a float32 dual fit at a small alpha on an
        fMRI-like spectrum from 2e-5 to 2e-6 relative error; a second step changes nothing measurable."""
        w = 1 / (self.s[:, None] + alphas[None, :])  # (r, T)
        a64 = alphas.double()[None, :]
        if self.primal:
            coef = self.v @ (self.q * w)
            for _ in range(refine):
                r = self.xty - self._xt(x, self._xw(x, coef)) - coef.double() * a64  # X'Y - (X'X + a) W
                coef = coef + self.v @ ((self.v.T @ r.to(self.dtype)) * w)
            return coef
        c = self.u @ (self.q * w)  # (n, T): coef = Xc' c with (XcXc' + a) c = Yc
        for _ in range(refine):
            xtc = self._xt(x, c).to(self.dtype)
            r = self.yc.double() - self._xw(x, xtc).double() - c.double() * a64
            c = c + self.u @ ((self.u.T @ r.to(self.dtype)) * w)
        return self._xt(x, c).to(self.dtype)

    def held_out(
        self, x: np.ndarray, test: np.ndarray, alphas: torch.Tensor, kernel: torch.Tensor | None = None
    ):
        """Centred predictions of the rows ``test`` of ``x`` (not in the fit), one (n_test, T) tensor per alpha;
        the rows are projected once (Xt V, or the kernel Xt Xc', given as ``kernel`` when the caller has it),
        each alpha then costs one small product."""
        if self.primal:
            f, basis = (self._rows(x, test) - self.x_mean) @ self.v, None
        else:
            f, basis = kernel, self.u
            if f is None:
                xt = self._rows(x, test) - self.x_mean
                f = torch.zeros(len(test), self.n, dtype=self.dtype, device=self.device)
                xr = _take(x, self.rows)
                for lo, hi in _spans(self.p, max(1, _CHUNK_ELEMENTS // self.n), None):
                    xc = torch.as_tensor(np.asarray(xr[:, lo:hi]), device=self.device).to(self.dtype)
                    f.addmm_(xt[:, lo:hi], (xc - self.x_mean[lo:hi]).T)
        for a in alphas:
            w = 1 / (self.s + a)
            yield f @ (self.q * w[:, None]) if basis is None else f @ (basis @ (self.q * w[:, None]))

    def loo_sse(self, x: np.ndarray, y: np.ndarray, alphas: torch.Tensor, groups: np.ndarray | None = None):
        """(A, T) sums of squared leave-one-out residuals, exact, with an unpenalised intercept; with
        ``groups`` (one label per row), leave-one-group-out: e_g = (I - H_gg)^-1 (y_g - fit_g)."""
        n_a, t = len(alphas), self.q.shape[1]
        sse = torch.zeros(n_a, t, dtype=torch.float64, device=self.device)
        off = 1 / self.n if self.intercept else 0.0  # the intercept's column of the hat matrix: 1/n each
        if groups is None:
            order, bounds = np.arange(self.n), None
        else:
            order, bounds = _group_blocks(np.asarray(groups)[self.rows])
        # hat matrix H = off + F diag(w_a) F' with F = Xc V, w_a = 1/(s+a) (primal) or F = U, w_a = s/(s+a)
        w_all = (1 if self.primal else self.s[:, None]) / (self.s[:, None] + alphas[None, :])  # (r, A)
        if self.primal:
            pieces = ((xc @ self.v, yc) for xc, yc in self._chunks(x, y, order, bounds))
        else:
            yc_all = self.yc
            pieces = (
                (self.u[order[lo:hi]], yc_all[order[lo:hi]]) for lo, hi in _spans(self.n, self.chunk, bounds)
            )
        done = 0
        for f, yc in pieces:
            local = None
            if bounds is not None:  # group boundaries inside this chunk, relative to it
                local = bounds[(bounds >= done) & (bounds <= done + len(f))] - done
            done += len(f)
            for a in range(n_a):
                w = w_all[:, a]
                res = yc - f @ (self.q * w[:, None])  # residuals of the fit on all rows
                if local is None:
                    h = (f * f) @ w + off
                    e = res / (1 - h)[:, None]
                else:
                    e = _block_solve(f, w, off, res, local)
                sse[a] += (e * e).sum(0, dtype=torch.float64)
        return sse


class _FoldGrams:
    """The centred Gram matrix of all rows, computed once, and from it each K-fold training set's centred Gram
    matrix (and, for the dual, the held-out kernel), instead of one pass over X per fold.

    The full matrix is centred on the mean of all rows; a fold's training rows T differ from it by their mean
    d = mean_T(Xc), so primal: Xc_T'Xc_T - n_T d d' = G - Xc_test'Xc_test - n_T d d' (one pass over the test
    rows), dual: K_T - r 1' - 1 r' + mean(r) with r the row means of K_T (double centring, exact).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, dtype: torch.dtype, device: torch.device, chunk: int,
                 fit_intercept: bool):  # fmt: skip
        self.x, self.intercept = x, fit_intercept
        self.base = _Rows(x, y, None, dtype, device, chunk, fit_intercept)
        self.primal = None  # decided per fold, by the size of its training set
        self.gram: torch.Tensor | None = None

    def _full(self, primal: bool) -> torch.Tensor:
        if self.gram is None or self.primal != primal:
            b = self.base
            if primal:
                g = torch.zeros(b.p, b.p, dtype=b.dtype, device=b.device)
                for lo, hi in _spans(b.n, b.chunk, None):
                    _add_gram(g, b._rows(self.x, b.rows[lo:hi]) - b.x_mean, outer=False)
            else:
                g = b._dual_gram(self.x)
            self.gram, self.primal = _symmetrise(g), primal
        return self.gram

    def fold(self, train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(centred Gram matrix of the training rows, held-out kernel of the test rows or None (primal))."""
        b = self.base
        primal = b.p <= len(train)
        full = self._full(primal)
        if primal:
            g = full.clone()
            total = torch.zeros(b.p, dtype=torch.float64, device=b.device)
            for lo, hi in _spans(len(test), b.chunk, None):
                xc = b._rows(self.x, test[lo:hi]) - b.x_mean
                _add_gram(g, xc, outer=False, scale=-1.0)
                total += xc.sum(0, dtype=torch.float64)
            if self.intercept:
                d = (-total / len(train)).to(b.dtype)  # the rows of Xc sum to zero
                g.addr_(d, d, alpha=-len(train))
            return g, None
        t = torch.as_tensor(train, device=b.device)
        k = full.index_select(0, t).index_select(1, t)
        f = full.index_select(0, torch.as_tensor(test, device=b.device)).index_select(1, t)
        if self.intercept:
            r = k.mean(1)
            c = r.mean()
            f -= f.mean(1, keepdim=True) + r[None, :] - c
            k -= r[:, None] + r[None, :] - c
        return k, f

    def release(self) -> torch.Tensor | None:
        """The Gram matrix of all rows, if it is the one a decomposition of all rows needs; dropped here."""
        g, self.gram = self.gram, None
        return g if g is not None and self.primal == (self.base.p <= self.base.n) else None


def _spans(n: int, chunk: int, bounds: np.ndarray | None):
    """(lo, hi) ranges of at most ``chunk`` rows (more only where one group is larger), cut only at ``bounds``."""
    lo = 0
    while lo < n:
        hi = min(n, lo + chunk)
        if bounds is not None and hi < n:
            cut = bounds[bounds <= hi]
            hi = int(cut[-1]) if cut[-1] > lo else int(bounds[bounds > lo][0])
        yield lo, hi
        lo = hi


def _block_solve(f: torch.Tensor, w: torch.Tensor, off: float, res: torch.Tensor, bounds: np.ndarray):
    """Leave-one-group-out residuals of the rows of one chunk: (I - H_gg)^-1 res_g for each group g, where
    H_gg = off + F_g diag(w) F_g'; groups are the runs between consecutive ``bounds``."""
    sizes = np.diff(bounds)
    m = int(sizes.max())
    idx = bounds[:-1, None] + np.arange(m)[None, :]
    valid = np.arange(m)[None, :] < sizes[:, None]
    idx_t = torch.as_tensor(np.where(valid, idx, 0), device=f.device)
    valid_t = torch.as_tensor(valid, device=f.device, dtype=f.dtype)
    fg = f[idx_t] * valid_t[..., None]  # (G, m, r), padding rows zero
    h = (fg * w) @ fg.transpose(1, 2) + off * valid_t[:, :, None] * valid_t[:, None, :]
    a = torch.eye(m, dtype=f.dtype, device=f.device) - h  # padding rows and columns are identity
    rg = res[idx_t] * valid_t[..., None]
    e = torch.linalg.solve(a, rg)
    return e[valid_t.bool()]


class RidgeEncoder(RegressorMixin, BaseEstimator):
    """Ridge regression X (trials x voxels) -> Y (trials x targets) with alpha chosen by cross-validation.

    Every alpha comes from one eigen-decomposition (of X'X when there are more trials than voxels, of XX'
    otherwise), so a grid of alphas costs little more than one fit. ``cv=None`` uses the exact leave-one-out
    (generalised CV) residuals of that decomposition, or with ``fit(X, y, groups=image_ids)`` the exact
    leave-one-group-out residuals (so that the other repeats of a left-out image are not in the fit); ``cv=K`` uses
    K folds (grouped when ``groups`` is given). ``alpha_per_target`` chooses an alpha per target column.
    Runs in torch on ``device`` ("auto": CUDA when present), in ``dtype`` float32 or float64, reading X in
    chunks of ``chunk_size`` rows so that only the (voxels x voxels) matrices live on the device at NSD scale.

    After ``fit``: ``coef_`` (T, V), ``intercept_`` (T,), ``alpha_`` (float, or (T,) per target),
    ``cv_mse_`` (A, T) cross-validated mean squared error per alpha and target, ``n_features_in_``.
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, cv: int | None = None, alpha_per_target: bool = False,
                 fit_intercept: bool = True, dtype: str = "float32", device: str = "auto",
                 chunk_size: int = 4096):  # fmt: skip
        self.alphas = alphas
        self.cv = cv
        self.alpha_per_target = alpha_per_target
        self.fit_intercept = fit_intercept
        self.dtype = dtype
        self.device = device
        self.chunk_size = chunk_size

    def _setup(self) -> tuple[torch.dtype, torch.device, torch.Tensor]:
        if self.dtype not in ("float32", "float64"):
            raise EncoderError(f"dtype={self.dtype!r}: expected 'float32' or 'float64'")
        try:
            alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise EncoderError(
                f"alphas={self.alphas!r}: expected one or more positive finite values"
            ) from None
        if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
            raise EncoderError(f"alphas={self.alphas!r}: expected one or more positive finite values")
        if self.cv is not None and (not isinstance(self.cv, int | np.integer) or self.cv < 2):
            raise EncoderError(
                f"cv={self.cv!r}: expected None (leave-one-out) or an integer number of folds >= 2"
            )
        if not isinstance(self.chunk_size, int | np.integer) or self.chunk_size < 1:
            raise EncoderError(f"chunk_size={self.chunk_size!r}: expected a positive number of rows")
        dt = torch.float32 if self.dtype == "float32" else torch.float64
        dev = torch.device(runtime.pick_device(self.device))
        return dt, dev, torch.as_tensor(alphas, dtype=dt, device=dev)

    def fit(self, X, y, groups=None):
        dt, dev, alphas = self._setup()
        x, y2, single = _check_xy(X, y)
        n = len(x)
        if n < 3:
            raise EncoderError(f"X has {n} rows: ridge cross-validation needs at least 3")
        if groups is not None and len(groups) != n:
            raise EncoderError(f"groups has {len(groups)} entries: expected one per row of X ({n})")
        if self.cv is None:
            dec = _Decomposition(x, y2, None, dt, dev, self.chunk_size, self.fit_intercept)
            sse = dec.loo_sse(x, y2, alphas, None if groups is None else np.asarray(groups))
        else:
            sse = torch.zeros(len(alphas), y2.shape[1], dtype=torch.float64, device=dev)
            grams = _FoldGrams(x, y2, dt, dev, self.chunk_size, self.fit_intercept)
            for train, test in _folds(n, self.cv, groups):
                gram, kernel = grams.fold(train, test)
                d = _Decomposition(x, y2, train, dt, dev, self.chunk_size, self.fit_intercept, gram=gram)
                yt = d._rows(y2, test) - d.y_mean
                for a, pred in enumerate(d.held_out(x, test, alphas, kernel)):
                    res = yt - pred
                    sse[a] += (res * res).sum(0, dtype=torch.float64)
                del d, gram, kernel
            gram = grams.release()
            dec = _Decomposition(x, y2, None, dt, dev, self.chunk_size, self.fit_intercept, gram=gram)
        mse = sse / n
        if self.alpha_per_target:
            best = mse.argmin(0)
        else:
            best = mse.mean(1).argmin().expand(y2.shape[1])
        chosen = alphas[best]
        # one step of iterative refinement where the solve's first-order error bound (unit roundoff x condition
        # number of the regularised matrix) could reach 1e-4; measured errors stay below half that bound
        kappa = float((dec.s.max() + chosen.min()) / chosen.min())
        coef = dec.coef(chosen, x, refine=int(torch.finfo(dt).eps / 2 * kappa > 1e-4))  # (p, T)
        intercept = dec.y_mean - dec.x_mean @ coef
        self.coef_ = coef.T.cpu().numpy()
        self.intercept_ = intercept.cpu().numpy()
        if single:
            self.coef_, self.intercept_ = self.coef_[0], self.intercept_[0]
        a = chosen.cpu().numpy().astype(np.float64)
        self.alpha_ = a if self.alpha_per_target else float(a[0])
        self.cv_mse_ = mse.cpu().numpy()
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise EncoderError("RidgeEncoder is not fitted: call fit(X, y) first")
        x = np.asarray(X)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise EncoderError(f"X has shape {x.shape}: expected (n, {self.n_features_in_}) as in fit")
        coef = np.atleast_2d(self.coef_).T.astype(self.dtype, copy=False)
        out = np.empty((len(x), coef.shape[1]), dtype=self.dtype)
        for i in range(0, len(x), self.chunk_size):
            out[i : i + self.chunk_size] = np.asarray(x[i : i + self.chunk_size], dtype=self.dtype) @ coef
        out += np.atleast_1d(self.intercept_).astype(self.dtype)
        return out[:, 0] if np.ndim(self.coef_) == 1 else out

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write the fitted weights as ``.npz`` atomically (no pickle)."""

        with fileio.atomic_path(path, suffix=".npz") as tmp:
            params = self.get_params() | {"alphas": [float(a) for a in np.ravel(self.alphas)],
                                          "cv": None if self.cv is None else int(self.cv)}  # fmt: skip
            np.savez(tmp, format=np.array(RIDGE_FORMAT), params=np.array(json.dumps(params)),
                     meta=np.array(json.dumps(meta or {})), coef=self.coef_, intercept=self.intercept_,
                     alpha=np.asarray(self.alpha_), cv_mse=self.cv_mse_)  # fmt: skip
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RidgeEncoder:
        """What :meth:`save` wrote; the ``meta`` given there is the attribute ``meta``."""

        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != RIDGE_FORMAT:
                    raise KeyError("format")
                params = json.loads(str(z["params"]))
                params["alphas"] = tuple(params["alphas"])
                enc = cls(**{k: v for k, v in params.items() if k in cls().get_params()})
                enc.coef_, enc.intercept_, enc.cv_mse_ = z["coef"], z["intercept"], z["cv_mse"]
                alpha = z["alpha"]
                enc.meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
            raise EncoderError(f"{path}: not a {RIDGE_FORMAT} file ({type(e).__name__}: {e})") from None
        enc.alpha_ = float(alpha) if alpha.ndim == 0 else alpha
        enc.n_features_in_ = enc.coef_.shape[-1]
        return enc


RIDGE_FORMAT = "lib.encoders.ridge/1"


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray, bool]:
    x = X if isinstance(X, np.ndarray) else np.asarray(X)
    y2 = np.asarray(y)
    if x.ndim != 2:
        raise EncoderError(f"X has shape {x.shape}: expected (trials, voxels)")
    single = y2.ndim == 1
    y2 = y2[:, None] if single else y2
    if y2.ndim != 2 or len(y2) != len(x):
        raise EncoderError(
            f"y has shape {np.shape(y)}: expected ({len(x)},) or ({len(x)}, targets) to match X"
        )
    if x.dtype.kind not in "fiu" or y2.dtype.kind not in "fiu":
        raise EncoderError(f"X ({x.dtype}) and y ({y2.dtype}): expected numeric arrays")
    finite = all(np.isfinite(x[i : i + 4096]).all() for i in range(0, len(x), 4096))  # no n x p mask at once
    if not (finite and np.isfinite(y2).all()):
        raise EncoderError("X or y holds NaN or infinite values")
    return x, y2, single


def _folds(n: int, k: int, groups) -> list[tuple[np.ndarray, np.ndarray]]:

    if groups is None:
        if k > n:
            raise EncoderError(f"cv={k} folds but only {n} rows")
        return list(KFold(k).split(np.zeros(n)))
    groups = np.asarray(groups)
    if len(groups) != n:
        raise EncoderError(f"groups has {len(groups)} entries: expected one per row of X ({n})")
    if k > len(np.unique(groups)):
        raise EncoderError(f"cv={k} folds but only {len(np.unique(groups))} groups")
    return list(GroupKFold(k).split(np.zeros(n), groups=groups))
