"""Sharded (FSDP2) parameters seen whole: the few places that need a full tensor go through here.

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, applied by `shard_model`) every parameter is a
DTensor holding 1/world of its rows outside the forward pass. Code that reads parameters outside forward
(the regularisers, adapter and checkpoint saving, resume) asks for `full(t)`: an all-gather that is
differentiable (its backward hands each rank its own slice of the gradient) and collective (EVERY
rank must call it, in the same order). Without sharding these are no-ops.
"""
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from utils.errors import BadInput


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder blocks: the modules whose class its `_no_split_modules` names (FSDP2's units
    here, torch.compile's in models/compile.py)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 full-shard (torch.distributed.fsdp.fully_shard, in place): one unit per decoder block
    (the classes in the model's `_no_split_modules`), then the root (embeddings, final norm, head).
    Frozen base weights and trainable adapters share a unit; only the adapters get gradients and
    optimizer state. Call after the adapters are built (σ_norm from the whole W0) and BEFORE the
    optimizer is created: the parameters are replaced by sharded DTensors."""
    from torch.distributed.fsdp import fully_shard

    blocks = decoder_blocks(model)
    if not blocks:
        names = sorted(getattr(model, "_no_split_modules", None) or [])
        raise BadInput(f"--fsdp: no decoder blocks found (_no_split_modules = {names})")
    for block in blocks:
        fully_shard(block, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return model


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathers an FSDP2 shard (collective, differentiable), else `t`."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_state(named_tensors, keep: bool) -> dict[str, torch.Tensor]:
    """{name: whole tensor on CPU}, gathered one tensor at a time (collective under FSDP2);
    ranks with keep=False drop each tensor at once and return {}."""
    state = {}
    for name, t in named_tensors:
        value = full(t.detach())
        if keep:
            state[name] = value.cpu()
    return state


@torch.no_grad()
def copy_full_(param: torch.Tensor, value: torch.Tensor) -> None:
    """param <- value, where `value` is the whole tensor and `param` may be an FSDP2 shard."""
    if isinstance(param, DTensor):
        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    param.copy_(value)
