"""Cloze scoring (`--eval_mode cloze`): each choice's TEXT scored as a continuation, as lm-eval scores
its multiple-choice tasks (ARC, PIQA, HellaSwag, WinoGrande, ...).

A model that cannot yet map questions to "answer1..answer5" can still know which answer is right;
this measures that, e.g. accuracy before vs after fine-tuning, with no answer word to learn.

Parsing: data/questions.py (question, choice texts, gold index of an LLM-Adapters record). The
requests (context, continuation) per task and their tokens: data/cloze.py (shared with the cloze
answer format, which trains on the gold choice's request).

Scores (lm-eval's HFLM loglikelihood and ConfigurableTask.process_results):
    score:  the summed log-probability of the continuation tokens given the context tokens.
    acc:    argmax of the scores; acc_norm: argmax of score / len(choice text) in characters (the
            choice without the leading space; for winogrande, where the choice is in the context and
            every option scores the same continuation, that length is the continuation's, so
            acc_norm = acc). Ties go to the first choice (numpy.argmax).
The pairs of all examples are batched together, right-padded (eval.loglik's scheme); identical
pairs are scored once, so identical choices tie exactly. Nothing is truncated (lm-eval cuts the
context from the left beyond the model's maximum length; these questions are far shorter).

Differences to lm-eval's own tasks: the text is the LLM-Adapters one (hellaswag's ctx_b is not
re-capitalised, boolq has no passage); openbookqa (lm-eval: the bare question stem) and social_i_qa
(lm-eval: "Q: ...\nA:") use the ARC template. tests/test_cloze.py runs lm-eval's own task
definitions on the same records (those three with this context) and gets the same numbers.
"""
from data.cloze import encoded_requests
from data.tasks import resolve_task
from eval.scoring import score_token_pairs
from utils.batching import pad_token_id

PROTOCOL_NAME = "cloze (lm-eval style)"


def argmax(values: list[float]) -> int:
    """Index of the largest value, the first on a tie (as numpy.argmax)."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def cloze_rows(model, tokenizer, records: list[dict], ids: list[int], task: str, *, batch_size: int,
               show_progress: bool = True) -> list[dict]:
    """Per-example rows for records[ids]: {"id", "choices" (texts), "scores" (summed log-probs),
    "extracted" (the acc prediction's answer word), "pred_norm" (acc_norm's), "gold", "correct",
    "correct_norm"}."""
    task = resolve_task(task)
    requests = [encoded_requests(tokenizer, records[i], task, i) for i in ids]
    pairs = [pair for encoded, _, _ in requests for pair in encoded]
    flat = score_token_pairs(model, pairs, pad_token_id(tokenizer), batch_size=batch_size, show_progress=show_progress)
    rows, at = [], 0
    for i, (encoded, lengths, item) in zip(ids, requests):
        scores, at = flat[at:at + len(encoded)], at + len(encoded)
        pred = argmax(scores)
        pred_norm = argmax([s / n if n else float("-inf") for s, n in zip(scores, lengths)])
        gold = item.words[item.gold]
        rows.append({"id": i, "choices": item.choices, "scores": scores, "extracted": item.words[pred],
                     "pred_norm": item.words[pred_norm], "gold": gold, "correct": pred == item.gold,
                     "correct_norm": pred_norm == item.gold})
    return rows
