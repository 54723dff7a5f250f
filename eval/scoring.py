"""Log-likelihood of continuations given contexts, each context run once (the loglik, text-answer and
cloze modes, and the text-format validation accuracy, all score through here).

    score(context, continuation) = Σ_k log p(continuation[k] | context + continuation[:k])

Single pass: a question's candidates share its context, so the contexts of a batch run once,
left-padded, with the KV cache kept (only the last position's logits are computed: they score every
candidate's first token). The candidates then run from that cache, each row its context's cache row,
with position ids continuing each context's own length, and only the work a score needs:
- a candidate feeds continuation[:-1] (its last token is predicted, never a predictor); a one-token
  candidate needs no second forward at all;
- the rows are sorted by length and split into buckets, one forward each, so that short rows are not
  padded to the batch's longest (`buckets`: the split with the fewest padded positions plus a fixed
  cost per forward);
- the output layer runs only at real (non-pad) positions (models/output_head.OutputHead, as the training
  loss runs it only at labelled ones), not at every padded position over the whole vocabulary.
A (context, continuation) pair scores as if it were run alone, whatever else is in the batch
(tested against one full forward per pair to 1e-4; padding is masked, positions are the pair's own).
Identical pairs are scored once, so identical choices tie exactly.
"""
import copy
import math

import torch
from tqdm.auto import tqdm

from eval.runtime import eval_mode, keeps_logits, model_device
from models.output_head import OutputHead
from utils.batching import pad

# A forward's fixed cost (Python and per-layer kernel launches) counted in continuation positions, the
# unit `buckets` weighs it against padding in. SmolLM2 cloze, batch 16, 2 CPU cores (ex/s, ARC-Easy /
# PIQA): 0 (one bucket per length) 9.1 / 6.4; 4: 11.2 / 8.2; 16: 13.1 / 9.3; 64: 13.0 / 9.9; one bucket
# per batch 11.6 / 5.3.
FORWARD_COST = 32


def buckets(lengths: list[int], cost: int = FORWARD_COST) -> list[tuple[int, int]]:
    """Consecutive [start, end) groups of `lengths` (sorted longest first), one forward each, that
    minimise the positions computed plus `cost` per forward:

        total = Σ_groups ((end - start) · lengths[start] + cost)   (a group is padded to its first row)

    by dynamic programming over the split points: best[j] = min_i best[i] + (j - i) · lengths[i] + cost."""
    best, split = [0] + [None] * len(lengths), [0] * (len(lengths) + 1)
    for j in range(1, len(lengths) + 1):
        best[j], split[j] = min((best[i] + (j - i) * lengths[i] + cost, i) for i in range(j))
    spans, j = [], len(lengths)
    while j:
        spans.append((split[j], j))
        j = split[j]
    return spans[::-1]


def rows_of(cache, index: torch.Tensor):
    """A cache of the context rows `index`, `cache` left as it is: a shallow copy whose layers select
    their rows (batch_select_indices assigns new tensors and the forward appends by concatenation, so
    the shared tensors are never written), one per bucket."""
    part = copy.copy(cache)
    part.layers = [copy.copy(layer) for layer in cache.layers]
    part.batch_select_indices(index)
    return part


def score_token_pairs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, *, batch_size: int,
                      show_progress: bool = True, desc: str = "score") -> list[float]:
    """Summed log-probability of each continuation given its context, for (context ids, continuation
    ids) pairs; `batch_size` contexts (with all their continuations) per context forward."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    groups: dict[tuple, list[tuple]] = {}  # context -> its distinct continuations
    for c, r in pairs:
        if not c or not r:
            raise ValueError("a context and a continuation must each have at least one token")
        conts = groups.setdefault(tuple(c), [])
        if tuple(r) not in conts:
            conts.append(tuple(r))
    contexts = sorted(groups, key=len, reverse=True)  # similar lengths together: little padding
    found: dict[tuple, float] = {}
    device = model_device(model)
    last_only = {"logits_to_keep": 1} if keeps_logits(model) else {}
    head = OutputHead.of(model)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    with eval_mode(model):
        for start in tqdm(range(0, len(contexts), batch_size), desc=desc, disable=not show_progress):
            batch = contexts[start:start + batch_size]
            ids, mask = pad([list(c) for c in batch], pad_id, "left")
            ids, mask = ids.to(device), mask.to(device)
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True, **last_only)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # p(first continuation token)
            for q, c in enumerate(batch):
                for r in groups[c]:
                    found[(c, r)] = first[q, r[0]].item()  # k = 0: predicted by the context's last position
            # k >= 1: token k predicted by the position of token k - 1, so a row feeds r[:-1]
            rows = sorted(((q, r) for q, c in enumerate(batch) for r in groups[c] if len(r) > 1),
                          key=lambda row: len(row[1]), reverse=True)
            lengths = mask.sum(-1)
            for a, b in buckets([len(r) - 1 for _, r in rows]):
                part = rows[a:b]
                index = torch.tensor([q for q, _ in part], device=device)
                cont, cont_mask = pad([list(r[:-1]) for _, r in part], pad_id, "right")
                cont, cont_mask = cont.to(device), cont_mask.to(device)
                positions = lengths[index][:, None] + torch.arange(cont.shape[1], device=device)[None]
                if limit:  # right padding after a context cut to fit (eval/cloze.py): its positions stay in range
                    positions = positions.clamp(max=limit - 1)
                inputs = {"input_ids": cont, "attention_mask": torch.cat([mask[index], cont_mask], dim=1)}
                extra = {"position_ids": positions, "cache": rows_of(out.cache, index), "use_cache": False}
                real = cont_mask.bool()  # the head's rows, row-major: row i's positions 0..len(r_i) - 2
                if head is None:
                    logits = model(**inputs, **extra).logits[real]
                else:
                    logits = head.logits_at(model, inputs, real, **extra)
                targets = torch.tensor([t for _, r in part for t in r[1:]], device=device)
                logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None])[:, 0].tolist()
                at = 0
                for q, r in part:  # summed in double precision: a score of -270 is not rounded to fp32's 3e-5
                    found[(batch[q], r)] += math.fsum(logp[at:at + len(r) - 1])
                    at += len(r) - 1
    return [found[(tuple(c), tuple(r))] for c, r in pairs]
