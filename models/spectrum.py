"""Knowledge from the pretrained spectrum: σ_norm for KnowHiRA's gate and the spectrum-aware init.

σ_norm (r values) for a pretrained W0 (out x in):
    k      = max(r, round(svd_rank_ratio · min(out, in)))           top-k part of the spectrum
    ranks  = round(linspace(0, k - 1, r))                            evenly spaced ranks (0-based)
    σ_norm = σ[ranks] / σ_1
Rounding is torch.round (half to even). Only singular VALUES are needed, so the exact and
cheapest routine is `torch.linalg.svdvals`, run on the weight's own device, batched over layers
of equal shape, in fp32. It must run on the PRETRAINED weights, i.e. after from_pretrained.
"""
import torch

from utils.errors import BadInput


def _chunk(device: torch.device) -> int:
    """Layers per svdvals call: batched on accelerators (one launch for many layers); one at a
    time on CPU, where LAPACK's batched path measured 5.7 s for 8 x (576 x 1536) vs 1.1 s looped."""
    return 8 if device.type != "cpu" else 1


def top_k(r: int, svd_rank_ratio: float, min_dim: int) -> int:
    """k = max(r, round(ratio · min(out, in))); k may not exceed min(out, in)."""
    if not 0.0 < svd_rank_ratio <= 1.0:
        raise ValueError(f"svd_rank_ratio must be in (0, 1], got {svd_rank_ratio}")
    k = max(r, int(round(svd_rank_ratio * min_dim)))
    if k > min_dim:
        raise BadInput(f"KnowHiRA needs r <= min(out, in); got r={r} for a layer with "
                       f"min(out, in)={min_dim}")
    return k


def sigma_norm_from_values(svals: torch.Tensor, r: int, svd_rank_ratio: float) -> torch.Tensor:
    """σ_norm from descending singular values (last dim); works batched."""
    k = top_k(r, svd_rank_ratio, svals.shape[-1])
    ranks = torch.round(torch.linspace(0, k - 1, r, device=svals.device)).long()  # round(linspace(0, k-1, r))
    return svals[..., ranks] / svals[..., :1]  # σ[ranks] / σ_1


@torch.no_grad()
def sigma_norms(weights: dict[str, torch.Tensor], r: int, svd_rank_ratio: float) -> dict[str, torch.Tensor]:
    """σ_norm for each named out x in weight, with batched svdvals over weights of equal shape."""
    groups: dict[tuple, list[str]] = {}
    for name, w in weights.items():
        groups.setdefault((tuple(w.shape), w.device), []).append(name)
    out = {}
    for (_, device), names in groups.items():
        step = _chunk(device)
        for i in range(0, len(names), step):
            chunk = names[i:i + step]
            stack = torch.stack([weights[n].float() for n in chunk])
            svals = torch.linalg.svdvals(stack)  # (chunk, min(out, in)), descending
            for n, s in zip(chunk, sigma_norm_from_values(svals, r, svd_rank_ratio)):
                out[n] = s
    return out


def spectrum_row_scale(sigma_norm: torch.Tensor, spectrum_init_scale: float) -> torch.Tensor:
    """f(σ) for the spectrum-aware init of A: row i scaled by f_i = σ_i^τ / sqrt(mean_j σ_j^2τ).

    τ = spectrum_init_scale >= 0. Rows tied to the top of the spectrum start larger and rows tied to
    its tail smaller, while the Frobenius norm of A stays that of the Kaiming init (so learning
    rates transfer from HiRA). τ = 0 is plain Kaiming.
    """
    if spectrum_init_scale < 0:
        raise ValueError(f"spectrum_init_scale must be >= 0, got {spectrum_init_scale}")
    f = sigma_norm.float() ** spectrum_init_scale
    return f / f.pow(2).mean().sqrt()
