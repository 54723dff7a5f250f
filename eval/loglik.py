"""Log-likelihood scoring of the candidate answers (an alternative to generate-and-extract).

Scoring protocol: for a prompt and an answer word w (or, in the text answer format, an option's
text, data/answer_format.py), the score is the total log-probability of the full training response
string ``"the correct answer is " + w`` (data record "output"),
tokenized as in training (add_special_tokens=False, the whole string at once) but WITHOUT the
trailing EOS, conditioned on encode_prompt(prompt) (the exact training prompt tokens). The
shared prefix "the correct answer is" adds the same amount to every candidate of a prompt, so
the ranking is decided by the answer word; scores are sums, not length-normalised.

A prompt runs once for all its candidates (eval.scoring.score_token_pairs, shared with the cloze
mode); the result equals scoring each pair alone (tested to 1e-4).
"""
from data.answer_format import candidate_response
from eval.generate import encoded
from eval.scoring import score_token_pairs
from utils.batching import pad_token_id


def _per_prompt_candidates(prompts, candidates) -> list[list[str]]:
    """Accept one shared candidate list or one list per prompt."""
    if candidates and all(isinstance(c, str) for c in candidates):
        return [list(candidates) for _ in prompts]
    if len(candidates) != len(prompts):
        raise ValueError(f"{len(candidates)} candidate lists for {len(prompts)} prompts")
    return [list(c) for c in candidates]


def score_candidates(model, tokenizer, prompts: list[str],
                     candidates: list[str] | list[list[str]], *, batch_size: int,
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
    response_ids: dict[str, list[int]] = {}
    pairs = []  # one (prompt ids, response ids) per (prompt, candidate), prompt by prompt
    for i, (prompt_ids, words) in enumerate(zip(prompts, per_prompt)):
        if not prompt_ids:
            raise ValueError(f"prompt {i} encodes to no tokens; nothing to condition on")
        for word in words:
            if word not in response_ids:
                response_ids[word] = tokenizer(candidate_response(word), add_special_tokens=False)["input_ids"]
            pairs.append((prompt_ids, response_ids[word]))
    flat = score_token_pairs(model, pairs, pad_token_id(tokenizer), batch_size=batch_size, show_progress=show_progress,
                             desc="loglik")
    scores, at = [], 0
    for words in per_prompt:
        scores.append(flat[at:at + len(words)])
        at += len(words)
    return scores


def loglik_predict(model, tokenizer, prompts: list[str],
                   candidates: list[str] | list[list[str]], *, batch_size: int,
                   show_progress: bool = True) -> tuple[list[str], list[list[float]]]:
    """(predicted word per prompt, scores): the candidate with the highest score wins
    (the first listed one on an exact tie)."""
    per_prompt = _per_prompt_candidates(prompts, candidates)
    scores = score_candidates(model, tokenizer, prompts, per_prompt, batch_size=batch_size, show_progress=show_progress)
    predictions = [words[max(range(len(s)), key=s.__getitem__)]
                   for words, s in zip(per_prompt, scores)]
    return predictions, scores
