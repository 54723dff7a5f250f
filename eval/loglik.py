"""Log-likelihood scoring of the candidate answers (an alternative to generate-and-extract).

Scoring protocol: for a prompt and an answer word w, the score is the total log-probability of
the full training response string ``"the correct answer is " + w`` (data record "output"),
tokenized as in training (add_special_tokens=False, the whole string at once) but WITHOUT the
trailing EOS, conditioned on encode_prompt(prompt) (the exact training prompt tokens). The
shared prefix "the correct answer is" adds the same amount to every candidate of a prompt, so
the ranking is decided by the answer word; scores are sums, not length-normalised.

All (prompt, candidate) pairs are batched together, right-padded (real tokens keep positions
0..L-1) with an attention mask; the result equals scoring each pair alone (tested to 1e-4).
"""
import torch
from tqdm.auto import tqdm

from eval.generate import encoded
from eval.runtime import eval_mode, model_device
from utils.batching import pad, pad_token_id

RESPONSE_PREFIX = "the correct answer is "


def candidate_response(word: str) -> str:
    """The response string scored for answer word `word` (same as the training target text)."""
    return RESPONSE_PREFIX + word


def _per_prompt_candidates(prompts, candidates) -> list[list[str]]:
    """Accept one shared candidate list or one list per prompt."""
    if candidates and all(isinstance(c, str) for c in candidates):
        return [list(candidates) for _ in prompts]
    if len(candidates) != len(prompts):
        raise ValueError(f"{len(candidates)} candidate lists for {len(prompts)} prompts")
    return [list(c) for c in candidates]


def score_candidates(model, tokenizer, prompts: list[str],
                     candidates: list[str] | list[list[str]], batch_size: int = 8,
                     show_progress: bool = True) -> list[list[float]]:
    """Summed log-probability of each candidate response, per prompt.

    `candidates` is either one list of answer words for every prompt, or one list per prompt
    (e.g. ARC questions offering 3, 4 or 5 choices). Returns scores[i][j] for prompt i and its
    candidate j, in the given order.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    per_prompt = _per_prompt_candidates(prompts, candidates)
    prompts = encoded(tokenizer, prompts)
    pad_id = pad_token_id(tokenizer)
    response_ids: dict[str, list[int]] = {}

    # one item per (prompt, candidate): (prompt index, candidate index, prompt ids, response ids)
    items = []
    for i, (prompt, words) in enumerate(zip(prompts, per_prompt)):
        prompt_ids = prompt
        if not prompt_ids:
            raise ValueError(f"prompt {i} encodes to no tokens; nothing to condition on")
        for j, word in enumerate(words):
            if word not in response_ids:
                response_ids[word] = tokenizer(candidate_response(word),
                                               add_special_tokens=False)["input_ids"]
            items.append((i, j, prompt_ids, response_ids[word]))
    items.sort(key=lambda item: len(item[2]) + len(item[3]), reverse=True)

    scores = [[0.0] * len(words) for words in per_prompt]
    device = model_device(model)
    with eval_mode(model):
        for start in tqdm(range(0, len(items), batch_size), desc="loglik",
                          disable=not show_progress):
            batch = items[start:start + batch_size]
            input_ids, attention_mask = pad([p + r for _, _, p, r in batch], pad_id, "right")
            logits = model(input_ids=input_ids.to(device),
                           attention_mask=attention_mask.to(device), use_cache=False).logits
            for row, (i, j, p, r) in enumerate(batch):
                # the token at position t is predicted by the logits at position t - 1
                positions = torch.arange(len(p) - 1, len(p) + len(r) - 1, device=logits.device)
                log_probs = torch.log_softmax(logits[row, positions].float(), dim=-1)
                targets = torch.tensor(r, dtype=torch.long, device=logits.device)
                scores[i][j] = log_probs.gather(1, targets[:, None]).sum().item()
    return scores


def loglik_predict(model, tokenizer, prompts: list[str],
                   candidates: list[str] | list[list[str]], batch_size: int = 8,
                   show_progress: bool = True) -> tuple[list[str], list[list[float]]]:
    """(predicted word per prompt, scores): the candidate with the highest score wins
    (the first listed one on an exact tie)."""
    per_prompt = _per_prompt_candidates(prompts, candidates)
    scores = score_candidates(model, tokenizer, prompts, per_prompt, batch_size, show_progress)
    predictions = [words[max(range(len(s)), key=s.__getitem__)]
                   for words, s in zip(per_prompt, scores)]
    return predictions, scores
