"""The training data order: a pure function of (seed, epoch), so a resumed or distributed run sees exactly
the examples an uninterrupted single-process run sees.

Data order: epoch e uses torch.randperm(n, generator=seed + e); with --group_by_length (the default)
that order is cut into mega-batches of MEGA_BATCHES global batches, each sorted by length, and the
global batches are then shuffled (same generator), so a batch holds records of similar length and
pads little (HF's LengthGroupedSampler, made a pure function of (seed, epoch)). Optimizer step k of
an epoch takes the global slice [k·G, (k+1)·G) with G = batch · grad_acc · world; micro-step j of
rank r takes batch examples from it. Resuming from step k therefore only needs k (plus the saved RNG
states), and 2 processes x b still see exactly the examples of 1 process x 2b.
"""
import torch

MEGA_BATCHES = 50  # global batches per length-sorted mega-batch (HF's LengthGroupedSampler uses 50)


def epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None = None, global_batch: int = 1
                ) -> list[int]:
    """The example order of an epoch: a seeded permutation; with `lengths`, grouped by length: the
    permutation's first n - n mod G examples in mega-batches of MEGA_BATCHES·G sorted longest first,
    cut into global batches of G, those batches shuffled; the remainder (never a full batch) last."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return order
    used, rest = order[:n - n % global_batch], order[n - n % global_batch:]
    mega = MEGA_BATCHES * global_batch
    ranked = [i for s in range(0, len(used), mega)
              for i in sorted(used[s:s + mega], key=lambda i: -lengths[i])]
    batches = [ranked[s:s + global_batch] for s in range(0, len(ranked), global_batch)]
    return [i for k in torch.randperm(len(batches), generator=g).tolist() for i in batches[k]] + rest
