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
The pairs of all examples are batched together (eval/scoring.py: each context run once, the choices
from its KV cache in length buckets); identical pairs are scored once, so identical choices tie exactly.
A context whose pair does not fit the model's positions (config max_position_embeddings) is cut from the
left, as lm-eval cuts context + continuation to its max length (a leading BOS kept; one position less
than lm-eval's cut, which does not count the continuation's last token, as it is not fed: kept so that
results stay what they were); results.json counts the examples cut (`truncated_prompts`).

Differences to lm-eval's own tasks: the text is the LLM-Adapters one (hellaswag's ctx_b is not
re-capitalised, boolq has no passage); openbookqa (lm-eval: the bare question stem) and social_i_qa
(lm-eval: "Q: ...\nA:") use the ARC template. tests/test_cloze.py runs lm-eval's own task
definitions on the same records (those three with this context) and gets the same numbers.
"""
from data.cloze import encoded_requests
from data.tasks import resolve_task
from eval.scoring import score_token_pairs
from utils.batching import pad_token_id
from utils.errors import BadInput

PROTOCOL_NAME = "cloze (lm-eval style)"


def argmax(values: list[float]) -> int:
    """Index of the largest value, the first on a tie (as numpy.argmax)."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def max_positions(model) -> int | None:
    """The model's positions (config max_position_embeddings; GPT-2's n_positions), or None."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None) or None


def fit_pair(context: list[int], continuation: list[int], max_pos: int | None, bos_id: int | None,
             where: str = "") -> list[int]:
    """The context cut from the LEFT so that context + continuation fit `max_pos` positions, keeping a
    leading BOS; unchanged when they fit (or max_pos is None). BadInput when the continuation alone leaves
    no room for a context token."""
    if max_pos is None or len(context) + len(continuation) <= max_pos:
        return context
    head = context[:1] if bos_id is not None and context[:1] == [bos_id] else []
    room = max_pos - len(head) - len(continuation)
    if room < 1:
        raise BadInput(f"{where}a choice of {len(continuation)} tokens leaves no room for its question in the "
                       f"model's {max_pos} positions")
    return head + context[len(context) - room:]


def count_truncated(model, tokenizer, records: list[dict], ids: list[int], task: str) -> int:
    """How many of records[ids] have a request cut by fit_pair (checking every one fits at all)."""
    max_pos, task = max_positions(model), resolve_task(task)
    if max_pos is None:
        return 0
    cut = 0
    for i in ids:
        encoded = encoded_requests(tokenizer, records[i], task, i)[0]
        for c, r in encoded:
            fit_pair(c, r, max_pos, tokenizer.bos_token_id, f"{task}: record {i}: ")
        cut += any(len(c) + len(r) > max_pos for c, r in encoded)
    return cut


def cloze_rows(model, tokenizer, records: list[dict], ids: list[int], task: str, *, batch_size: int,
               show_progress: bool = True) -> list[dict]:
    """Per-example rows for records[ids]: {"id", "choices" (texts), "scores" (summed log-probs),
    "extracted" (the acc prediction's answer word), "pred_norm" (acc_norm's), "gold", "correct",
    "correct_norm"}."""
    task = resolve_task(task)
    requests = [encoded_requests(tokenizer, records[i], task, i) for i in ids]
    max_pos, bos = max_positions(model), tokenizer.bos_token_id
    pairs = [(fit_pair(c, r, max_pos, bos, f"{task}: record {i}: "), r)
             for i, (encoded, _, _) in zip(ids, requests) for c, r in encoded]
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
