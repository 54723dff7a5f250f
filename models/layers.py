"""What every adapter layer of this repository stands on, whatever its method: the frozen base layer's
weight as out x in (nn.Linear or GPT-2's Conv1D), the precision of decompositions on it, and
`MergeableAdapter`, the base class with the shared merge/unmerge. The Hadamard family's layer is in
models/hadamard.py, KaSA's in models/methods/kasa.py; both build on this module, which imports nothing
of the project.
"""
import torch
from torch import nn


def _is_conv1d(layer: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as in x out and computes x @ W + b."""
    return type(layer).__name__ == "Conv1D"


def base_weight(layer: nn.Module) -> torch.Tensor:
    """W0 as an out x in view of nn.Linear or GPT-2 Conv1D weight (no copy)."""
    return layer.weight.t() if _is_conv1d(layer) else layer.weight


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of decompositions and accumulations on a weight: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of nn.Linear or Conv1D."""
    return tuple(base_weight(layer).shape)


class MergeableAdapter(nn.Module):
    """Base of every adapter layer of this repository: shared merge/unmerge for layers that define
    `base` and `delta_weight()`; `saved_tensors` names what the adapter file holds, and
    `after_load()` runs once those tensors are restored."""

    merged = False
    saved_tensors: tuple = ()

    def after_load(self) -> None:
        """Hook for layers whose base depends on saved tensors (KaSA's truncation)."""

    @torch.no_grad()
    def merge(self, keep_backup: bool = True) -> None:
        """W0 <- W0 + ΔW in place; keeps a copy of W0 so `unmerge` restores it bit for bit."""
        if self.merged:
            return
        w0, dw = base_weight(self.base), self.delta_weight()
        self._w0_backup = w0.detach().clone() if keep_backup else None
        w0.copy_((w0.to(dw.dtype) + dw).to(w0.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact frozen base weight from the backup taken by `merge`."""
        if not self.merged:
            return
        if self._w0_backup is None:
            raise RuntimeError("this layer was merged without a backup of W0; cannot unmerge")
        base_weight(self.base).copy_(self._w0_backup)
        del self._w0_backup
        self.merged = False
