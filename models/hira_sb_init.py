"""HiRA-SB ("HiRA Silver Bullet"): HiRA with a LoRA-SB-style initialisation.

    W = W0 + s · W0 ⊙ (B R A)      B: out x r and A: r x in FIXED, R: r x r trainable

Before training, one pass over a few batches collects the full fine-tuning gradient G = ∂L/∂W0 of
every targeted layer (`accumulate_full_gradients`). Then, layer by layer:

1. H = W0 ⊙ G is the gradient w.r.t. the Hadamard factor M in W = W0 + W0 ⊙ M. Its truncated SVD
   H ≈ U_r S_r V_rᵀ gives the fixed subspace: B = U_r, A = V_rᵀ (`sb_factors`).
2. R is the least-squares fit of one full fine-tuning SGD step inside that subspace:
   R = argmin_R ‖W0 ⊙ (B R A) + η G‖_F (`sb_solve_r`), stored as hira_R = R / s.

So the first update of the adapter equals (in the least-squares sense) the first step of full
fine-tuning with learning rate η, and training then moves only R inside span(B) ⊗ span(A).
Derivation, costs and memory: docs/hira_sb.md.

Public API:
    accumulate_full_gradients(model, batches, loss_fn, offload_to_cpu=False) -> {name: G}
    sb_factors(w0, g, r) -> (B, A)
    sb_solve_r(w0, g, b, a, eta) -> R
    hira_sb_initialise(model, batches, loss_fn, eta, offload_to_cpu=False) -> {name: report}
"""
import math
from contextlib import contextmanager

import torch
from torch import nn

from models.adapter import adapter_layers
from models.hadamard import HadamardLinear
from models.layers import acc_dtype, base_weight
from utils.errors import BadInput


def sb_layers(model: nn.Module) -> dict[str, HadamardLinear]:
    """The model's HiRA-SB layers (Hadamard layers with a core R), by full module name."""
    return {n: m for n, m in adapter_layers(model).items() if hasattr(m, "hira_R")}


@contextmanager
def _base_forward(layers: dict[str, HadamardLinear]):
    """Make each layer's forward exactly its base layer's (the adapter path is skipped).

    HadamardLinear.forward returns `self.base(x)` when `merged` is True; the flag is set only for
    the duration of the context (W0 is not touched) and always restored.
    """
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        raise RuntimeError(f"hira_sb layers {merged[:3]} are merged; unmerge them before the "
                           f"HiRA-SB gradient pass (W0 must be the pretrained weight)")
    try:
        for m in layers.values():
            m.merged = True
        yield
    finally:
        for m in layers.values():
            m.merged = False


# ---- 1. the full fine-tuning gradient ∂L/∂W0 ---------------------------------------------------
def accumulate_full_gradients(model: nn.Module, batches, loss_fn, offload_to_cpu: bool = False
                              ) -> dict[str, torch.Tensor]:
    """G = Σ_batches ∂loss_fn(model, batch)/∂W0 (out x in) for every hira_sb layer of `model`.

    `loss_fn(model, batch)` returns a scalar (a tensor with one element); the caller normalises it
    (e.g. summed token CE / number of target tokens of all batches). Returns {layer_name: G} with G
    in fp32 (fp64 for an fp64 model), on W0's device, or on the CPU with `offload_to_cpu`.

    How, without the memory of full fine-tuning:
    - W0 never gets requires_grad and no optimizer state exists. A forward hook on each layer keeps
      its input x and puts a tensor hook on its output; when the output's gradient gy arrives, the
      hook adds Gw = gyᵀ x (batch and sequence flattened) into the layer's accumulation buffer.
      Only that one buffer per layer is kept (one fp32 copy of the targeted weights in total) plus,
      transiently, the layer inputs of the batch (the activations a full fine-tuning step keeps).
    - `offload_to_cpu=True`: the buffers live on the CPU and each contribution gyᵀ x is moved there
      as soon as it is computed, so the accelerator holds at most one layer's out x in gradient at a
      time.
    - The adapter path plays no part: during the pass each hira_sb layer computes exactly its base
      layer (`_base_forward`), whatever B, A, R hold.
    - Backward needs something in the graph that requires grad, while every weight is frozen: a
      forward hook on `model.get_input_embeddings()` calls `.requires_grad_()` on the embeddings'
      OUTPUT (a fresh activation, not a parameter), and the pass runs
      `torch.autograd.grad(loss, <those outputs>)` instead of `.backward()`: autograd then computes
      only the activation gradients on the path to the embeddings, and no parameter's `.grad` is
      written, not even for parameters that happen to require grad (e.g. hira_R).
    All hooks are removed and the layers restored afterwards, also on error.

    The model's train/eval mode is left as it is (use eval() for a deterministic pass without
    dropout). Gradient checkpointing should be off for this pass. Raises RuntimeError if a layer
    gets no gradient in a batch (it does not influence the loss).
    """
    layers = sb_layers(model)
    if not layers:
        raise ValueError("model has no hira_sb adapter layers; build them first with "
                         "models.methods.build(model, HiRASBConfig(...))")
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embed is None:
        raise BadInput(f"{type(model).__name__} has no get_input_embeddings(); the gradient pass "
                       f"needs the input embeddings to make the graph differentiable")

    grads: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        w0 = base_weight(layer.base)
        grads[name] = torch.zeros(w0.shape, dtype=acc_dtype(w0.dtype),
                                  device=torch.device("cpu") if offload_to_cpu else w0.device)
    fired = dict.fromkeys(layers, 0)
    embed_outputs: list[torch.Tensor] = []

    def embed_hook(module, args, out):
        if torch.is_grad_enabled():
            out = out.requires_grad_()  # the one tensor of the graph that requires grad
            embed_outputs.append(out)
        return out

    def layer_hook(name):
        buf = grads[name]

        def hook(module, args, kwargs, out):
            if not out.requires_grad:
                return None
            x = (args[0] if args else kwargs["x"]).detach()

            def on_grad(gy):
                gy2 = gy.reshape(-1, gy.shape[-1]).to(buf.dtype)
                gw = gy2.t() @ x.reshape(-1, x.shape[-1]).to(buf.dtype)  # ∂L/∂W0 = gyᵀ x
                buf.add_(gw.to(buf.device))
                fired[name] += 1
                return None  # gy itself is left unchanged

            out.register_hook(on_grad)
            return None
        return hook

    handles = []
    n_batches = 0
    try:
        with _base_forward(layers):
            handles.append(embed.register_forward_hook(embed_hook))
            for name, layer in layers.items():
                handles.append(layer.register_forward_hook(layer_hook(name), with_kwargs=True))
            for batch in batches:
                embed_outputs.clear()
                for name in fired:
                    fired[name] = 0
                with torch.enable_grad():
                    loss = loss_fn(model, batch)
                    if not torch.is_tensor(loss) or loss.numel() != 1:
                        raise ValueError("loss_fn(model, batch) must return a scalar tensor")
                    if not embed_outputs:
                        raise RuntimeError("the input embeddings were not called by loss_fn")
                    if not loss.requires_grad:
                        raise RuntimeError("loss_fn returned a loss without a graph "
                                           "(was it computed under torch.no_grad()?)")
                    torch.autograd.grad(loss.reshape(()), embed_outputs, allow_unused=True)
                del loss
                embed_outputs.clear()
                silent = [n for n, k in fired.items() if k == 0]
                if silent:
                    raise RuntimeError(f"hira_sb layers {silent[:3]} received no gradient in batch "
                                       f"{n_batches} (do they influence the loss?)")
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        embed_outputs.clear()
    if n_batches == 0:
        raise ValueError("accumulate_full_gradients got no batches")
    return grads


# ---- 2. the fixed factors B, A -----------------------------------------------------------------
def _svd_factors(w0: torch.Tensor, g: torch.Tensor, r: int):
    """(B, A, S_r, ‖H‖_F²) from the exact SVD of H = W0 ⊙ G."""
    out_f, in_f = w0.shape
    if g.shape != w0.shape:
        raise ValueError(f"gradient shape {tuple(g.shape)} != weight shape {tuple(w0.shape)}")
    if not 0 < r <= min(out_f, in_f):
        raise BadInput(f"rank r={r} must be in [1, min(out, in)] = [1, {min(out_f, in_f)}]")
    acc = acc_dtype(w0.dtype)
    h = w0.detach().to(acc) * g.to(device=w0.device, dtype=acc)  # H = ∂L/∂M = W0 ⊙ G
    u, s, vh = torch.linalg.svd(h, full_matrices=False)
    return u[:, :r].contiguous(), vh[:r].contiguous(), s[:r], (s * s).sum()


def sb_factors(w0: torch.Tensor, g: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B = U_r (out x r), A = V_rᵀ (r x in) from the exact truncated SVD H ≈ U_r S_r V_rᵀ, H = W0 ⊙ G.

    H is the gradient w.r.t. the Hadamard factor M of W = W0 + W0 ⊙ M, so span(B) ⊗ span(A) is
    the rank-r subspace that best captures the first full fine-tuning step in Hadamard space.
    Exact `torch.linalg.svd(full_matrices=False)` in fp32 (fp64 for fp64 inputs). B has orthonormal
    columns, A orthonormal rows, and B diag(S_r) A is the best rank-r approximation of H.
    """
    b, a, _, _ = _svd_factors(w0, g, r)
    return b, a


# ---- 3. the core R: least-squares fit of one full fine-tuning step -----------------------------
def sb_solve_r(w0: torch.Tensor, g: torch.Tensor, b: torch.Tensor, a: torch.Tensor,
               eta: float) -> torch.Tensor:
    """R = argmin_R ‖W0 ⊙ (B R A) + η G‖_F  (r x r), for any B (out x r) and A (r x in).

    Derivation. The map R ↦ F(R) = W0 ⊙ (B R A), F(R)_ij = W0_ij Σ_kl B_ik R_kl A_lj, is linear in
    R, so this is a linear least-squares problem in the r² unknowns vec(R). Setting the gradient
    of ‖F(R) + ηG‖² w.r.t. R_kl to zero:
        Σ_ij (F(R) + ηG)_ij W0_ij B_ik A_lj = 0   for all k, l.
    With P = W0 ⊙ W0 this is the normal equations  N vec(R) = -η vec(Bᵀ (W0 ⊙ G) Aᵀ)  with
        N[(k,l),(p,q)] = Σ_ij B_ik B_ip P_ij A_lj A_qj,
    an r² x r² matrix, symmetric PSD (N = Dᵀ D for the (out·in) x r² design matrix D whose column
    (k,l) is vec(W0 ⊙ (B e_k e_lᵀ A))). vec is row-major: index (k,l) -> k·r + l.

    N is built by einsum in two stages: Q[k,p,j] = Σ_i B_ik B_ip P_ij (cost O(out·in·r²)), then
    N[k,l,p,q] = Σ_j Q[k,p,j] A_lj A_qj (cost O(r⁴·in)), reshaped to (k,l),(p,q). The solve costs
    O(r⁶). Total O(out·in·r²) + O(r⁴·in) + O(r⁶) time, O((out + in)·r² + r⁴) extra memory.

    Precision and solver: forming N squares the condition number of D, so N and the right-hand
    side are formed and solved in float64 (on the CPU for MPS tensors, which lack fp64). N is
    Jacobi-scaled (unit diagonal) and solved by Cholesky (`torch.linalg.cholesky_ex`, the SPD
    counterpart of `torch.linalg.solve`, half its cost, and it reports singularity). If N is
    singular or numerically so (Cholesky fails, a zero diagonal, or a pivot ratio below
    r²·eps64), the fallback is the minimum-norm least-squares solution, i.e. what `lstsq` with
    an SVD driver returns, computed through the pseudo-inverse of N from `torch.linalg.eigh`
    (eigenvalues below r²·eps64·λ_max dropped); unlike lstsq's gelsd driver this also runs on GPUs.

    Returns R in fp32 (fp64 for fp64 inputs), on W0's device. R is linear in η (R(η) = η·R(1)).
    """
    if not math.isfinite(eta):
        raise ValueError(f"eta must be finite, got {eta}")
    out_f, in_f = w0.shape
    r = b.shape[1]
    if b.shape != (out_f, r) or a.shape != (r, in_f) or g.shape != w0.shape:
        raise ValueError(f"shape mismatch: W0 {tuple(w0.shape)}, G {tuple(g.shape)}, "
                         f"B {tuple(b.shape)}, A {tuple(a.shape)}")
    out_dtype, out_device = acc_dtype(w0.dtype), w0.device
    dev = torch.device("cpu") if w0.device.type == "mps" else w0.device
    f64 = dict(device=dev, dtype=torch.float64)
    w = w0.detach().to(**f64)
    g64, b64, a64 = g.detach().to(**f64), b.detach().to(**f64), a.detach().to(**f64)

    rhs = -eta * (b64.t() @ (w * g64) @ a64.t())  # -η Bᵀ (W0 ⊙ G) Aᵀ, r x r
    p = w * w  # P = W0 ⊙ W0
    del w, g64
    q = torch.einsum("ikp,ij->kpj", b64[:, :, None] * b64[:, None, :], p)  # Q[k,p,j]
    del p
    n = torch.einsum("kpj,lqj->klpq", q, a64[:, None, :] * a64[None, :, :])  # N[k,l,p,q]
    del q
    n = n.reshape(r * r, r * r)
    x = _solve_psd(n, rhs.reshape(r * r))
    return x.reshape(r, r).to(device=out_device, dtype=out_dtype)


def _solve_psd(n: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve N x = rhs for symmetric PSD N (fp64); min-norm least squares if N is singular."""
    m = n.shape[0]
    rcond = m * torch.finfo(n.dtype).eps
    d = n.diagonal()
    if bool((d > 0).all()):
        scale = d.rsqrt()
        ns = n * scale[:, None] * scale[None, :]  # Jacobi scaling: unit diagonal
        ell, info = torch.linalg.cholesky_ex(ns)
        piv = ell.diagonal()
        if int(info) == 0 and bool(torch.isfinite(piv).all()) and \
                float((piv.min() / piv.max()) ** 2) > rcond:
            y = torch.cholesky_solve((rhs * scale)[:, None], ell)[:, 0]
            return y * scale
    # singular: minimum-norm least-squares solution via the pseudo-inverse of N
    lam, vec = torch.linalg.eigh(n)
    keep = lam > rcond * lam.max().clamp_min(0)
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return vec @ (inv * (vec.t() @ rhs))


# ---- 4. the initialiser --------------------------------------------------------------------------
def hira_sb_initialise(model: nn.Module, batches, loss_fn, eta: float,
                       offload_to_cpu: bool = False) -> dict[str, dict[str, float]]:
    """Set hira_B, hira_A (fixed) and hira_R (trainable) of every hira_sb layer of `model`.

    G from `accumulate_full_gradients`, then layer by layer (each G freed after use):
    B, A = sb_factors(W0, G, r); R = sb_solve_r(W0, G, B, A, η); hira_R = R / s, so that the
    layer's update s · W0 ⊙ (B hira_R A) is the least-squares match of -η G. η is the learning rate
    of the full fine-tuning step being imitated (with `loss_fn` normalised as in training).
    η = 0 gives R = 0: the model then computes exactly the base model.

    Returns {layer_name: {"rel_residual": ‖W0 ⊙ (B R A) + ηG‖ / ‖ηG‖ (η-independent; 0 if G = 0),
    "svd_energy": share of ‖H‖_F² in the top-r singular values, "grad_norm": ‖G‖_F,
    "r_norm": ‖hira_R‖_F}} for logging.
    """
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta (the learning rate of the imitated step) must be >= 0, got {eta}")
    layers = sb_layers(model)
    for name, layer in layers.items():
        if layer.scale == 0:
            raise BadInput(f"layer {name} has scale 0; HiRA-SB needs s != 0")
    grads = accumulate_full_gradients(model, batches, loss_fn, offload_to_cpu=offload_to_cpu)
    report = {}
    for name in list(grads):
        layer = layers[name]
        w0 = base_weight(layer.base).detach()
        g = grads.pop(name).to(w0.device)
        b, a, s_r, h_sq = _svd_factors(w0, g, layer.r)
        r1 = sb_solve_r(w0, g, b, a, 1.0)  # R is linear in η: R(η) = η · R(1)
        g_norm = g.norm()
        fit = w0.to(g.dtype) * (b @ r1 @ a)
        rel = float((fit + g).norm() / g_norm) if g_norm > 0 else 0.0
        del fit, g
        r_core = r1 * (eta / layer.scale)
        with torch.no_grad():
            layer.hira_B.copy_(b)
            layer.hira_A.copy_(a)
            layer.hira_R.copy_(r_core)
        layer.hira_B.requires_grad_(False)
        layer.hira_A.requires_grad_(False)
        layer.hira_R.requires_grad_(True)
        report[name] = {"rel_residual": rel,
                        "svd_energy": float((s_r * s_r).sum() / h_sq) if h_sq > 0 else 0.0,
                        "grad_norm": float(g_norm), "r_norm": float(r_core.norm())}
    return report
