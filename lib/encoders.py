"""fMRI -> embedding encoders: cross-validated ridge (closed form, one decomposition for every alpha) and a
MindEye-style residual MLP with regression and contrastive losses."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, RegressorMixin

from . import io, losses, runtime

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))


class EncoderError(ValueError):
    """Bad input to an encoder (shapes, parameters, files)."""


# ================================================================================================================
# ridge


def _eigh(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric matrix. On CPU LAPACK's divide and conquer (syevd) overwrites ``g``
    with the eigenvectors (peak: the matrix and a workspace of twice its size); on GPU torch's."""
    if g.device.type == "cpu":
        import scipy.linalg

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
    import scipy.linalg

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
        import json

        with io.atomic_path(path, suffix=".npz") as tmp:
            params = self.get_params() | {"alphas": [float(a) for a in np.ravel(self.alphas)],
                                          "cv": None if self.cv is None else int(self.cv)}  # fmt: skip
            np.savez(tmp, format=np.array(RIDGE_FORMAT), params=np.array(json.dumps(params)),
                     meta=np.array(json.dumps(meta or {})), coef=self.coef_, intercept=self.intercept_,
                     alpha=np.asarray(self.alpha_), cv_mse=self.cv_mse_)  # fmt: skip
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RidgeEncoder:
        import json
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != RIDGE_FORMAT:
                    raise KeyError("format")
                params = json.loads(str(z["params"]))
                params["alphas"] = tuple(params["alphas"])
                enc = cls(**{k: v for k, v in params.items() if k in cls().get_params()})
                enc.coef_, enc.intercept_, enc.cv_mse_ = z["coef"], z["intercept"], z["cv_mse"]
                alpha = z["alpha"]
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
    from sklearn.model_selection import GroupKFold, KFold

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


# ================================================================================================================
# residual MLP (MindEye's backbone and projector)


class ResidualMLP(torch.nn.Module):
    """voxels -> Linear, LayerNorm, GELU, dropout -> ``depth`` residual blocks of the same -> linear head to the
    embedding; a projector (LayerNorm, GELU, Linear, ... back to the embedding size) on top for the contrastive
    losses, as in MindEye. ``forward`` returns (embedding, projection); without a projector both are the head's
    output. A learnable logit scale (1/temperature, CLIP's parameterisation) serves the InfoNCE loss."""

    def __init__(self, n_voxels: int, out_dim: int, width: int = 4096, depth: int = 4, dropout: float = 0.15,
                 projector: bool = True, proj_width: int = 2048):  # fmt: skip
        super().__init__()
        if min(n_voxels, out_dim, width, proj_width) < 1 or depth < 0 or not 0 <= dropout < 1:
            raise EncoderError(
                f"ResidualMLP(n_voxels={n_voxels}, out_dim={out_dim}, width={width}, depth={depth}, "
                f"dropout={dropout}): expected positive sizes, depth >= 0 and 0 <= dropout < 1"
            )
        nn = torch.nn
        self.stem = nn.Sequential(
            nn.Linear(n_voxels, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout))
            for _ in range(depth)
        )
        self.head = nn.Linear(width, out_dim)
        self.projector = (
            nn.Sequential(
                nn.LayerNorm(out_dim),
                nn.GELU(),
                nn.Linear(out_dim, proj_width),
                nn.LayerNorm(proj_width),
                nn.GELU(),
                nn.Linear(proj_width, out_dim),
            )  # fmt: skip
            if projector
            else None
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        e = self.head(h)
        return e, (self.projector(e) if self.projector is not None else e)


@dataclasses.dataclass
class MLPConfig:
    """Architecture, losses and schedule of :func:`train_mlp`.

    Losses (weights; 0 switches one off): ``mse`` (squared L2 distance of the embedding head to the target),
    ``cosine`` (1 - cosine of the embedding head), ``clip`` (symmetric InfoNCE of the projection, learnable
    temperature), ``softclip`` and ``bimixco`` (MindEye's, on the projection). ``bimixco_frac``: BiMixCo (with
    voxel mixup) for that first fraction of the epochs, then SoftCLIP, as MindEye; with 0, SoftCLIP throughout.
    """

    width: int = 1024
    depth: int = 2
    dropout: float = 0.15
    projector: bool = True
    proj_width: int = 512
    epochs: int = 40
    batch_size: int = 128
    lr: float = 3e-4  # the one-cycle peak
    weight_decay: float = 0.01
    pct_start: float = 0.1
    mse: float = 1.0
    cosine: float = 0.0
    clip: float = 0.0
    softclip: float = 1.0
    bimixco: float = 1.0
    bimixco_frac: float = 1 / 3
    bimixco_temp: float = 0.006
    softclip_temp: float = 0.005
    mixup_beta: float = 0.15
    val_every: int = 1
    patience: int = 10  # epochs without a better validation retrieval before stopping; 0 never stops early
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise EncoderError(f"epochs={self.epochs}, batch_size={self.batch_size}: expected >= 1 and >= 2")
        weights = {k: getattr(self, k) for k in ("mse", "cosine", "clip", "softclip", "bimixco")}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise EncoderError(f"loss weights {weights}: expected non-negative with at least one positive")
        if not 0 <= self.bimixco_frac <= 1:
            raise EncoderError(f"bimixco_frac={self.bimixco_frac}: expected a fraction in [0, 1]")
        if not (self.lr > 0 and 0 < self.pct_start < 1 and self.val_every >= 1 and self.patience >= 0):
            raise EncoderError(
                f"lr={self.lr}, pct_start={self.pct_start}, val_every={self.val_every}, patience={self.patience}: "
                "expected lr > 0, 0 < pct_start < 1, val_every >= 1, patience >= 0"
            )

    @property
    def contrastive(self) -> bool:
        return self.clip > 0 or self.softclip > 0 or self.bimixco > 0


MLP_STATE_FORMAT = "lib.encoders.mlp-state/1"
MLP_FORMAT = "lib.encoders.mlp/1"


class MLPEncoder:
    """A trained :class:`ResidualMLP` with its configuration; ``predict`` gives the embedding head, ``project``
    the projection head (the space the contrastive losses trained: use it for retrieval)."""

    def __init__(
        self, model: ResidualMLP, cfg: MLPConfig, n_voxels: int, out_dim: int, device: str | torch.device
    ):
        self.model, self.cfg, self.n_voxels, self.out_dim = model, cfg, n_voxels, out_dim
        self.device = torch.device(device)

    @torch.no_grad()
    def _run(self, x: np.ndarray, which: int, batch: int = 1024) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_voxels:
            raise EncoderError(f"X has shape {x.shape}: expected (n, {self.n_voxels})")
        self.model.eval()
        out = [
            self.model(torch.as_tensor(x[i : i + batch], dtype=torch.float32, device=self.device))[which]
            .float().cpu().numpy()
            for i in range(0, len(x), batch)
        ]  # fmt: skip
        return np.concatenate(out) if out else np.zeros((0, self.out_dim), np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, 0)

    def project(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, 1)

    def retrieval_space(self, x: np.ndarray) -> np.ndarray:
        """The output retrieval should use: the projection when contrastive losses trained it, else the head."""
        return self.project(x) if self.cfg.contrastive else self.predict(x)

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        state = {"format": MLP_FORMAT, "config": dataclasses.asdict(self.cfg), "n_voxels": self.n_voxels,
                 "out_dim": self.out_dim, "model": self.model.state_dict(), "meta": meta or {}}  # fmt: skip
        return io.write_bytes(path, io.torch_bytes(state))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> MLPEncoder:
        try:
            s = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(s, dict) or s.get("format") != MLP_FORMAT:
                raise KeyError("format")
        except Exception as e:  # noqa: BLE001 - a foreign or truncated file is the same user error
            raise EncoderError(f"{path}: not a {MLP_FORMAT} file ({type(e).__name__})") from None
        dev = runtime.pick_device(device)
        try:
            cfg = MLPConfig(**s["config"])
            model = _build(cfg, s["n_voxels"], s["out_dim"])
            model.load_state_dict(s["model"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise EncoderError(
                f"{path}: a {MLP_FORMAT} file that does not fit this code ({type(e).__name__})"
            ) from None
        return cls(model.to(dev).eval(), cfg, s["n_voxels"], s["out_dim"], dev)


def _build(cfg: MLPConfig, n_voxels: int, out_dim: int) -> ResidualMLP:
    return ResidualMLP(n_voxels, out_dim, cfg.width, cfg.depth, cfg.dropout, cfg.projector, cfg.proj_width)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def mlp_loss(model: ResidualMLP, x: torch.Tensor, y: torch.Tensor, cfg: MLPConfig, mix: bool,
             rng: np.random.Generator) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """The weighted loss of one batch, and its terms. ``mix``: BiMixCo phase (voxel mixup; the contrastive term
    is BiMixCo), else SoftCLIP. Regression terms and InfoNCE always see the unmixed batch."""
    terms: dict[str, torch.Tensor] = {}
    yn = _unit(y.float())
    emb, proj = model(x)
    emb, proj = emb.float(), proj.float()
    if cfg.mse:
        terms["mse"] = ((emb - y.float()) ** 2).sum(-1).mean()
    if cfg.cosine:
        terms["cosine"] = (1 - (_unit(emb) * yn).sum(-1)).mean()
    if cfg.clip:
        terms["clip"] = losses.clip_loss(_unit(proj), yn, model.logit_scale.exp().clamp(max=100))
    if mix and cfg.bimixco:
        xm, perm, b = losses.mixco(x, rng, beta=cfg.mixup_beta)
        _, pm = model(xm)
        terms["bimixco"] = losses.bimixco_loss(_unit(pm.float()), yn, perm, b.float(), cfg.bimixco_temp)
    elif not mix and cfg.softclip:
        terms["softclip"] = losses.soft_clip_loss(_unit(proj), yn, cfg.softclip_temp)
    total = sum(getattr(cfg, k) * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


def train_mlp(x_train: np.ndarray, y_train: np.ndarray, cfg: MLPConfig, x_val: np.ndarray | None = None,
              y_val: np.ndarray | None = None, device: str = "auto", state_dir: str | Path | None = None,
              stop_after: int | None = None) -> tuple[MLPEncoder, dict]:  # fmt: skip
    """Train a :class:`ResidualMLP` from voxels to target embeddings (rows of ``y_train``).

    AdamW with a one-cycle learning rate over ``cfg.epochs``; bf16 autocast on CUDA. After every ``val_every``
    epochs, top-1 image retrieval on (``x_val``, ``y_val``) decides early stopping (``patience``) and which epoch's
    weights are returned (the best). The state (weights, optimiser, schedule, RNG, history, best weights) is saved
    atomically after each epoch to ``<state_dir>/mlp-state-<key>.pt``; the key covers the configuration, the data
    and the device, and a run with the same key resumes (``stop_after`` ends a session after that many epochs).
    Returns (encoder, history) with per-epoch ``loss`` and its terms, ``val_img_retrieval_top1``, ``seconds``.
    """
    from . import metrics

    cfg.check()
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    if x_train.ndim != 2 or y_train.ndim != 2 or len(x_train) != len(y_train):
        raise EncoderError(f"x_train {x_train.shape} and y_train {y_train.shape}: expected (n, V) and (n, D)")
    if len(x_train) < cfg.batch_size:
        raise EncoderError(f"batch_size={cfg.batch_size}: larger than the {len(x_train)} training rows")
    if (x_val is None) != (y_val is None):
        raise EncoderError("x_val and y_val: give both (validation for early stopping) or neither")
    has_val = x_val is not None
    if has_val:
        x_val, y_val = np.asarray(x_val), np.asarray(y_val)
        if (
            x_val.shape[1:] != x_train.shape[1:]
            or y_val.shape[1:] != y_train.shape[1:]
            or len(x_val) != len(y_val)
        ):
            raise EncoderError(
                f"x_val {x_val.shape} and y_val {y_val.shape}: expected (m, {x_train.shape[1]}) and "
                f"(m, {y_train.shape[1]}) like the training data"
            )
        if len(x_val) < 2:
            raise EncoderError(f"x_val has {len(x_val)} rows: validation retrieval needs at least 2")
    dev = torch.device(runtime.pick_device(device))
    n, v = x_train.shape
    d = y_train.shape[1]
    key = io.content_key(
        {
            "config": dataclasses.asdict(cfg),
            "data": io.array_key(x_train, y_train, *((x_val, y_val) if has_val else ())),
            "device": dev.type,
        }
    )
    torch.manual_seed(cfg.seed)
    model = _build(cfg, v, d).to(dev)
    opt = runtime.adamw_for(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch = n // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=cfg.pct_start
    )
    rng = np.random.default_rng(cfg.seed)
    history: dict = {"loss": [], "terms": [], "val_epoch": [], "val_img_retrieval_top1": [], "seconds": 0.0}
    epoch, best, best_state, stale = 0, -1.0, None, 0
    state_path, state = io.training_state(state_dir, "mlp-state", MLP_STATE_FORMAT, key)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if (
            dev.type == "cuda" and state.get("cuda_rng") is not None
        ):  # dropout on the GPU draws from its generator
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        history, epoch, best, best_state, stale = (
            state[k] for k in ("history", "epoch", "best", "best_state", "stale")
        )
    done = state is not None and state.get("done", False)
    xt = torch.as_tensor(x_train, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y_train, dtype=torch.float32, device=dev)
    mix_epochs = int(round(cfg.bimixco_frac * cfg.epochs)) if cfg.bimixco else 0
    end = cfg.epochs if stop_after is None else min(cfg.epochs, epoch + stop_after)
    bar = runtime.progress(total=cfg.epochs, initial=epoch, desc="MLP encoder")
    while not done and epoch < end:
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        total, terms = 0.0, {}
        for b in range(steps_per_epoch):
            idx = torch.as_tensor(order[b * cfg.batch_size : (b + 1) * cfg.batch_size], device=dev)
            with runtime.autocast(dev):
                loss, parts = mlp_loss(model, xt[idx], yt[idx], cfg, epoch < mix_epochs, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            for k, val in parts.items():
                terms[k] = terms.get(k, 0.0) + val / steps_per_epoch
        epoch += 1
        history["loss"].append(total / steps_per_epoch)
        history["terms"].append(terms)
        history["seconds"] += time.perf_counter() - t0
        if has_val and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            enc = MLPEncoder(model, cfg, v, d, dev)
            score = metrics.retrieval(enc.retrieval_space(x_val), y_val, draws=5, seed=cfg.seed)["image"]
            history["val_epoch"].append(epoch)
            history["val_img_retrieval_top1"].append(score)
            if score > best:
                best, stale = score, 0
                best_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
                history["best_epoch"] = epoch
            else:
                stale += cfg.val_every
        done = epoch >= cfg.epochs or (cfg.patience > 0 and stale >= cfg.patience and has_val)
        history["stopped_early"] = done and epoch < cfg.epochs
        bar.update(1)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", val=f"{best:.3f}")
        if state_path is not None:
            s = {"format": MLP_STATE_FORMAT, "key": key, "epoch": epoch, "model": model.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng.bit_generator.state,
                 "torch_rng": torch.get_rng_state(), "history": history, "best": best, "best_state": best_state,
                 "stale": stale, "done": done,
                 "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}  # fmt: skip
            io.write_bytes(state_path, io.torch_bytes(s))
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    history["done"] = done
    history["state_key"] = key
    return MLPEncoder(model.eval(), cfg, v, d, dev), history


# ================================================================================================================
# analyses built on the encoders: targets by image id, ROI-group comparison, voxel-wise encoding accuracy


def rows_of(table_ids: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (one per entry of ``table_ids``) for each id of ``ids``, in order (ids may repeat)."""
    table_ids = np.asarray(table_ids)
    order = np.argsort(table_ids, kind="stable")
    pos = np.searchsorted(table_ids, ids, sorter=order)
    pos = np.minimum(pos, len(table_ids) - 1)
    found = table_ids[order[pos]] == ids
    if not np.all(found):
        missing = np.asarray(ids)[~found][:5]
        raise EncoderError(f"ids {missing.tolist()} have no row in the table of {len(table_ids)} ids")
    return np.asarray(values)[order[pos]]


PREDICTIONS_FORMAT = "lib.encoders.predictions/1"


def save_predictions(path: str | Path, test_ids: np.ndarray, model_key: str, **arrays: np.ndarray) -> Path:
    """Test-set predictions (and targets) of the encoders as ``.npz``, with the ids and the embedding model's key."""
    with io.atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, format=np.array(PREDICTIONS_FORMAT), test_ids=np.asarray(test_ids),
                 model_key=np.array(model_key), **arrays)  # fmt: skip
    return Path(path)


def load_predictions(path: str | Path, model_key: str | None = None) -> dict[str, np.ndarray]:
    """What :func:`save_predictions` wrote; with ``model_key``, predictions into another model's space are refused."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != PREDICTIONS_FORMAT:
                raise KeyError("format")
            out = {k: z[k] for k in z.files if k != "format"}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise EncoderError(f"{path}: not a {PREDICTIONS_FORMAT} file ({type(e).__name__})") from None
    if model_key is not None and str(out["model_key"]) != model_key:
        raise EncoderError(
            f"{path}: predictions into embedding model {out['model_key']}, expected {model_key}"
        )
    return out


def layout_targets(images: np.ndarray, grid: int = 8) -> np.ndarray:
    """The spatial layout of each image: grey levels (0..1) on a ``grid`` x ``grid`` raster, flattened (n, grid^2)."""
    images = np.asarray(images, np.float32)
    n, h, w = images.shape[:3]
    if h % grid or w % grid:
        raise EncoderError(f"images of {h} x {w} px: grid={grid} must divide both sides")
    grey = images.mean(-1) / 255
    return grey.reshape(n, grid, h // grid, grid, w // grid).mean((2, 4)).reshape(n, grid * grid)


def one_hot(labels: np.ndarray, classes: list | None = None) -> tuple[np.ndarray, list]:
    """(n, C) one-hot float32 matrix of ``labels`` and the class list (sorted unique labels unless given)."""
    classes = sorted(set(labels)) if classes is None else list(classes)
    index = {c: k for k, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), np.float32)
    out[np.arange(len(labels)), [index[v] for v in labels]] = 1
    return out, classes


def roi_comparison(x_train: np.ndarray, x_test: np.ndarray, columns: dict[str, np.ndarray],
                   embedding: tuple[np.ndarray, np.ndarray], category: tuple[np.ndarray, np.ndarray],
                   layout: tuple[np.ndarray, np.ndarray], alphas=DEFAULT_ALPHAS, device: str = "auto",
                   seed: int = 0) -> dict[str, dict]:  # fmt: skip
    """Decode three kinds of content from each ROI group's voxels (``columns``: group -> column indices), each
    by ridge with its own leave-one-out alpha per target, from one decomposition per group:

    - ``img_retrieval_top1``: the image embedding (``embedding`` = (train, test) targets), top-1 among the test set;
    - ``category_accuracy``: a class label (``category`` = (train, test) labels; ridge on one-hot, argmax);
    - ``layout_r``: the spatial layout (``layout`` = (train, test) low-resolution images), Pearson r per test
      image between decoded and true raster, averaged.

    Rows of ``x_train`` must be distinct images (average repeats first), so that leaving one out is honest.
    """
    from . import metrics

    e_tr, e_te = embedding
    c_tr, classes = one_hot(np.asarray(category[0]))
    l_tr, l_te = layout
    y = np.hstack([e_tr, c_tr, l_tr]).astype(np.float32)
    de, dc = e_tr.shape[1], c_tr.shape[1]
    out = {}
    for name, cols in runtime.progress(columns.items(), desc="ROI groups", leave=False):
        if len(cols) == 0:
            continue
        enc = RidgeEncoder(alphas=alphas, alpha_per_target=True, device=device).fit(x_train[:, cols], y)
        pred = enc.predict(x_test[:, cols])
        ret = metrics.retrieval(pred[:, :de], e_te, seed=seed)
        guess = np.asarray(classes, dtype=object)[pred[:, de : de + dc].argmax(1)]
        out[name] = {
            "n_voxels": int(len(cols)),
            "img_retrieval_top1": ret["image"],
            "brain_retrieval_top1": ret["brain"],
            "category_accuracy": float(np.mean(guess == np.asarray(category[1], dtype=object))),
            "layout_r": float(metrics.pearson_per_sample(pred[:, de + dc :], l_te).mean()),
        }
    return out


def voxel_encoding_accuracy(features_train: np.ndarray, x_train: np.ndarray, features_test: np.ndarray,
                            x_test: np.ndarray, alphas=DEFAULT_ALPHAS, device: str = "auto") -> np.ndarray:  # fmt: skip
    """Forward (encoding) model: ridge from stimulus features to every voxel (leave-one-out alpha per voxel);
    returns each voxel's Pearson r between predicted and measured test responses, (V,)."""
    from . import metrics

    enc = RidgeEncoder(alphas=alphas, alpha_per_target=True, device=device).fit(features_train, x_train)
    return metrics.pearson_per_column(enc.predict(features_test), x_test)


def fit_encoders(x_train: np.ndarray, targets: dict[str, np.ndarray], x_test: np.ndarray, ridge: dict,
                 mlp: MLPConfig | None, val: np.ndarray, x_val: np.ndarray, val_targets: dict[str, np.ndarray],
                 mlp_kinds=("image",), groups: np.ndarray | None = None, device: str = "auto",
                 state_dir: str | Path | None = None) -> dict[str, tuple]:  # fmt: skip
    """Ridge into every target kind of ``targets`` ({kind: (n_train, D)}), and the MLP into ``mlp_kinds``.

    Ridge fits all training rows (``ridge``: RidgeEncoder arguments; ``groups``, the image of each row, makes its
    cross-validation leave whole images out); the MLP trains
    on the rows not in the boolean mask ``val`` and stops early on (``x_val``, ``val_targets[kind]``), the
    held-out images' averaged responses. Returns {"ridge_<kind>" / "mlp_<kind>": (encoder, test prediction in its
    retrieval space, MLP history or None)}.
    """
    out: dict[str, tuple] = {}
    for kind, y in targets.items():
        r = RidgeEncoder(**ridge).fit(x_train, y, groups=groups)
        out[f"ridge_{kind}"] = (r, r.predict(x_test), None)
        if mlp is None or kind not in mlp_kinds:
            continue
        m, h = train_mlp(
            x_train[~val], y[~val], mlp, x_val, val_targets[kind], device=device, state_dir=state_dir
        )
        out[f"mlp_{kind}"] = (m, m.retrieval_space(x_test), h)
    return out


def ridge_learning_curve(x_train: np.ndarray, y_train: np.ndarray, ids: np.ndarray, x_test: np.ndarray,
                         y_test: np.ndarray, fractions=(0.1, 0.25, 0.5, 1.0), ridge: dict | None = None,
                         seed: int = 0) -> dict[str, list]:  # fmt: skip
    """Test image retrieval of ridge trained on growing random subsets of the training images (all trials of an
    image together): {"n": images, "top1": retrieval}."""
    from . import metrics

    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(ids))
    out: dict[str, list] = {"n": [], "top1": []}
    for n in sorted({int(round(f * len(uniq))) for f in fractions}):
        if n < 3:
            continue
        keep = np.isin(ids, uniq[:n])
        r = RidgeEncoder(**(ridge or {})).fit(x_train[keep], y_train[keep], groups=ids[keep])
        out["n"].append(n)
        out["top1"].append(metrics.retrieval(r.predict(x_test), y_test, seed=seed)["image"])
    return out


def cross_fitted(x: np.ndarray, y: np.ndarray, ids: np.ndarray, folds: int = 5, seed: int = 0,
                 **ridge) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Out-of-fold ridge predictions for every training image, made the way the test set is predicted: the
    images are split into ``folds`` (all repeats of an image in one fold); each fold's :class:`RidgeEncoder`
    (``ridge`` keyword arguments) is fitted on the single trials of the other folds and predicts the
    repeat-averaged responses of its own images. Returns (sorted image ids, predictions (n_images, D)); what a
    generator tuned on fMRI (03) trains on, since in-sample predictions are closer to the truth than test ones."""
    from . import prep

    x, y, ids = np.asarray(x), np.asarray(y), np.asarray(ids)
    if len(x) != len(y) or len(x) != len(ids):
        raise EncoderError(f"x ({len(x)}), y ({len(y)}) and ids ({len(ids)}): expected one row each")
    uniq = np.unique(ids)
    if not 2 <= folds <= len(uniq):
        raise EncoderError(f"folds={folds}: expected 2 .. {len(uniq)} (the number of images)")
    fold_of = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % folds, strict=True))
    row_fold = np.array([fold_of[i] for i in ids])
    x_avg, avg_ids, _ = prep.average_repeats(x, ids)
    avg_fold = np.array([fold_of[i] for i in avg_ids])
    out = np.zeros((len(avg_ids), y.shape[1]), np.float32)
    for k in runtime.progress(range(folds), desc="cross-fitted ridge"):
        enc = RidgeEncoder(**ridge).fit(x[row_fold != k], y[row_fold != k])
        out[avg_fold == k] = enc.predict(x_avg[avg_fold == k])
    order = np.argsort(avg_ids)
    return avg_ids[order], out[order]
