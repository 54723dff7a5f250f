"""Log-likelihood of continuations given contexts, each context run once (the loglik, text-answer and
cloze modes, and the text-format validation accuracy, all score through here).

    score(context, continuation) = Σ_k log p(continuation[k] | context + continuation[:k])

Single pass: a question's candidates share its context, so the contexts of a batch run once,
left-padded, with the KV cache kept (only the last position's logits are computed: they score every
candidate's first token); the cache is then indexed per candidate and all candidates of the batch run
in one forward from it, right-padded, with position ids continuing each context's own length. A
(context, continuation) pair scores exactly as if it were run alone, whatever else is in the batch
(tested against one full forward per pair to 1e-4; padding is masked, positions are the pair's own).
Identical pairs are scored once, so identical choices tie exactly.
"""
import torch
from tqdm.auto import tqdm

from eval.runtime import eval_mode, keeps_logits, model_device
from utils.batching import pad


def score_token_pairs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, *, batch_size: int,
                      show_progress: bool = True, desc: str = "score") -> list[float]:
    """Summed log-probability of each continuation given its context, for (context ids, continuation
    ids) pairs; `batch_size` contexts (with all their continuations) per forward pair."""
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
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    with eval_mode(model):
        for start in tqdm(range(0, len(contexts), batch_size), desc=desc, disable=not show_progress):
            batch = contexts[start:start + batch_size]
            ids, mask = pad([list(c) for c in batch], pad_id, "left")
            ids, mask = ids.to(device), mask.to(device)
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True, **last_only)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # p(first continuation token)
            rows = [(q, r) for q, c in enumerate(batch) for r in groups[c]]
            index = torch.tensor([q for q, _ in rows], device=device)
            cache = out.cache
            cache.batch_select_indices(index)  # one cached context per candidate row
            cont, cont_mask = pad([list(r) for _, r in rows], pad_id, "right")
            cont, cont_mask = cont.to(device), cont_mask.to(device)
            lengths = mask.sum(-1)[index]
            positions = lengths[:, None] + torch.arange(cont.shape[1], device=device)[None]
            if limit:  # right padding after a context cut to fit (eval/cloze.py): its positions stay in range
                positions = positions.clamp(max=limit - 1)
            logits = model(input_ids=cont, attention_mask=torch.cat([mask[index], cont_mask], dim=1),
                           position_ids=positions, cache=cache, use_cache=False).logits
            for row, (q, r) in enumerate(rows):
                # token k of the continuation: predicted by the context's last position (k = 0), else
                # by the continuation's position k - 1
                targets = torch.tensor(r, device=device)
                rest = torch.log_softmax(logits[row, :len(r) - 1].float(), dim=-1)
                total = first[q, r[0]] + rest.gather(1, targets[1:, None]).sum()
                found[(batch[q], r)] = total.item()
    return [found[(tuple(c), tuple(r))] for c, r in pairs]
