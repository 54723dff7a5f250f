"""The math of the adapter analysis: ranks, knowledge-subspace shares, random baselines, bounds.

Definitions (all on one out x in update ΔW, singular values σ_1 >= σ_2 >= ... >= 0):

- numerical rank: #{i : σ_i > tol}, tol = max(out, in) · eps · σ_1 with eps = float32 machine epsilon
  (2^-23 ≈ 1.19e-7). This is the default tolerance of numpy.linalg.matrix_rank and
  torch.linalg.matrix_rank for a float32 matrix: the size below which a singular value cannot be told
  apart from the rounding of a float32 matrix of that norm. ΔW is rebuilt in float32, so this is the
  matching epsilon.
- effective rank (Roy & Vetterli, 2007): exp(H(p)) with p_i = σ_i / Σ_j σ_j and H(p) = −Σ p_i log p_i
  (0 log 0 = 0). It equals m for m equal non-zero singular values and lies between 1 and the rank.
  Singular values at or below the numerical-rank tolerance are counted as exact zeros (when the shape
  is given): otherwise the float32 rounding floor (~1e-7 σ_1 in each of min(out, in) directions) would
  lift the effective rank of an exactly rank-1 update above 1.
- knowledge-subspace shares, with U_k (out x k), V_k (in x k) the top-k left/right singular vectors of the
  PRETRAINED W0:
      share_left  = ‖U_kᵀ ΔW‖_F² / ‖ΔW‖_F²          (energy of ΔW in W0's top-k output directions)
      share_right = ‖ΔW V_k‖_F² / ‖ΔW‖_F²           (... in W0's top-k input directions)
      share_both  = ‖U_kᵀ ΔW V_k‖_F² / ‖ΔW‖_F²      (... in both at once)
  For an isotropic Gaussian matrix of the same shape the expected energies give k/out, k/in and
  k²/(out·in) (E‖PG‖² = tr(P)·in·σ² for a rank-k projector P): the "random" baselines.
"""
import math

import numpy as np
import torch

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 2^-23



def _values(s) -> np.ndarray:
    """Singular values as a float64 numpy vector (any order; negatives are not expected)."""
    if isinstance(s, torch.Tensor):
        s = s.detach().double().cpu().numpy()
    return np.asarray(s, dtype=np.float64).ravel()


def rank_tolerance(s, shape, eps: float = FLOAT32_EPS) -> float:
    """tol = max(out, in) · eps · σ_max (numpy/torch matrix_rank's default for that eps)."""
    s = _values(s)
    return float(max(shape) * eps * (s.max() if s.size else 0.0))


def numerical_rank(s, shape, eps: float = FLOAT32_EPS) -> int:
    """Number of singular values > max(out, in) · eps · σ_max; 0 for a zero matrix."""
    s = _values(s)
    if s.size == 0 or s.max() <= 0:
        return 0
    return int((s > rank_tolerance(s, shape, eps)).sum())


def effective_rank(s, shape=None, eps: float = FLOAT32_EPS) -> float:
    """exp(entropy of p_i = σ_i / Σσ) (Roy & Vetterli 2007); 0 for a zero matrix.

    With `shape` (out, in), singular values <= the numerical-rank tolerance count as zeros.
    """
    s = _values(s)
    if s.size == 0 or s.max() <= 0:
        return 0.0
    if shape is not None:
        s = s[s > rank_tolerance(s, shape, eps)]
    p = s / s.sum()
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum()))


@torch.no_grad()
def subspace_shares(dw: torch.Tensor, u_k: torch.Tensor, v_k: torch.Tensor) -> tuple[float, float, float]:
    """(‖U_kᵀΔW‖², ‖ΔW V_k‖², ‖U_kᵀΔW V_k‖²) / ‖ΔW‖_F²; NaNs for ΔW = 0.

    dw: out x in; u_k: out x k and v_k: in x k with orthonormal columns.
    """
    total = dw.double().pow(2).sum().item()
    if total == 0:
        return math.nan, math.nan, math.nan
    left = u_k.t().to(dw.dtype) @ dw  # k x in
    right = dw @ v_k.to(dw.dtype)  # out x k
    both = left @ v_k.to(dw.dtype)  # k x k
    return tuple(float(x.double().pow(2).sum().item() / total) for x in (left, right, both))


def random_expectation(k: int, out_f: int, in_f: int) -> tuple[float, float, float]:
    """Expected (share_left, share_right, share_both) of an isotropic Gaussian out x in matrix."""
    return k / out_f, k / in_f, k * k / (out_f * in_f)


def alignment_k(r: int | None, svd_rank_ratio: float | None, min_dim: int) -> int:
    """k = models.spectrum.top_k(r, ratio, min(out, in)) with r capped by min(out, in) and the ratio
    defaulting to 0.5 (KnowHiRA's default) for runs that have none."""
    from models.spectrum import top_k

    ratio = 0.5 if svd_rank_ratio is None else float(svd_rank_ratio)
    return top_k(min(int(r or 1), min_dim), ratio, min_dim)


@torch.no_grad()
def layer_stats(dw: torch.Tensor, w0: torch.Tensor, *, rank_bound, r: int | None,
                svd_rank_ratio: float | None, base: torch.Tensor | None = None,
                align_r: int | None = None) -> tuple[dict, np.ndarray]:
    """All per-layer numbers for one update; returns (row, singular values of ΔW descending).

    dw: ΔW (out x in); w0: the PRETRAINED W0 (knowledge subspace, rank bound); base: the weight ΔW is
    added to, for the relative update (W0 itself except for KaSA's truncated W0'); align_r: the r in
    k = top_k(r, ratio, min(out, in)) (default: r; fft has no r of its own); rank_bound(r, shape,
    rank(W0)): the method's upper bound on rank(ΔW) (Method.rank_bound). Everything float32.
    """
    dw, w0 = dw.float(), w0.float()
    base = w0 if base is None else base.float()
    shape = tuple(dw.shape)
    out_f, in_f = shape
    s_dw = torch.linalg.svdvals(dw)
    u, s_w0, vh = torch.linalg.svd(w0, full_matrices=False)
    k = alignment_k(align_r or r, svd_rank_ratio, min(shape))
    shares = subspace_shares(dw, u[:, :k], vh[:k].t())
    del u, vh
    rand = random_expectation(k, out_f, in_f)
    w0_rank = numerical_rank(s_w0, shape)
    dw_fro = s_dw.double().pow(2).sum().sqrt().item()
    base_fro = base.double().pow(2).sum().sqrt().item()
    bound = rank_bound(r, shape, w0_rank)
    n_rank = numerical_rank(s_dw, shape)
    row = {
        "out": out_f, "in": in_f, "r": r, "min_dim": min(shape), "k": k,
        "numerical_rank": n_rank, "rank_bound": bound,
        "rank_over_bound": n_rank / bound if bound else math.nan,
        "effective_rank": effective_rank(s_dw, shape),
        "rank_tol": rank_tolerance(s_dw, shape), "sigma_max": float(s_dw[0]) if s_dw.numel() else 0.0,
        "w0_rank": w0_rank, "w0_effective_rank": effective_rank(s_w0, shape),
        "share_left": shares[0], "share_right": shares[1], "share_both": shares[2],
        "share_left_random": rand[0], "share_right_random": rand[1], "share_both_random": rand[2],
        "dw_fro": dw_fro, "base_fro": base_fro,
        "rel_update": dw_fro / base_fro if base_fro > 0 else math.nan,
    }
    return row, s_dw.double().cpu().numpy()


def pearson(x, y) -> float:
    """Pearson correlation of two vectors; NaN when either is constant."""
    x, y = _values(x), _values(y)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])
