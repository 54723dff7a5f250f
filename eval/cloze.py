"""Cloze scoring (`--eval_mode cloze`): each choice's TEXT scored as a continuation, as lm-eval scores
its multiple-choice tasks (ARC, PIQA, HellaSwag, WinoGrande, ...).

A model that cannot yet map questions to "answer1..answer5" can still know which answer is right;
this measures that, e.g. accuracy before vs after fine-tuning, with no answer word to learn.

Parsing: data/questions.py (question, choice texts, gold index of an LLM-Adapters record).

Requests (context, continuation), per task:
    ARC-Easy, ARC-Challenge, openbookqa, social_i_qa, piqa:
        "Question: {question}\\nAnswer:", " {choice}"           (lm-eval's arc_easy / piqa template)
    boolq (these files carry no passage):
        "{question}?\\nAnswer:", " no" / " yes"                  (true -> " yes")
    winogrande (lm-eval's partial scoring):
        sentence up to "_" + option, " " + the rest of the sentence after "_" (stripped)
    hellaswag:
        preprocess("{activity label}: {context}"), " " + preprocess(ending)   (lm-eval's preprocess)

Scores (lm-eval's HFLM loglikelihood and ConfigurableTask.process_results):
    tokens: trailing spaces of the context move to the continuation; the context is encoded alone
            and context + continuation as one string (the tokenizer's own special tokens, as
            `tokenizer(text)`); the continuation's tokens are the whole string's after the context's.
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
(lm-eval: "Q: ...\nA:") use the ARC template above. tests/test_cloze.py runs lm-eval's own task
definitions on the same records (those three with this context) and gets the same numbers.
"""
import re

from data.questions import ClozeQuestion, parse_record
from data.tasks import resolve_task
from eval.scoring import score_token_pairs
from utils.batching import pad_token_id

PROTOCOL_NAME = "cloze (lm-eval style)"

QUESTION_TEMPLATE = "Question: {question}\nAnswer:"
BOOLQ_TEMPLATE = "{question}?\nAnswer:"
def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag preprocess (tasks/hellaswag/utils.py): WikiHow bracket tags removed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def cloze_requests(item: ClozeQuestion, task: str) -> tuple[list[tuple[str, str]], list[int]]:
    """([(context, continuation) per choice], [the acc_norm length in characters per choice])."""
    task = resolve_task(task)
    if task == "winogrande":
        blank = item.question.index("_")
        rest = item.question[blank + 1:].strip()
        return [(item.question[:blank] + option, " " + rest) for option in item.choices], \
            [len(rest)] * len(item.choices)
    if task == "hellaswag":
        context, choices = hellaswag_preprocess(item.question), [hellaswag_preprocess(c) for c in item.choices]
    elif task == "boolq":
        context, choices = BOOLQ_TEMPLATE.format(question=item.question), item.choices
    else:
        context, choices = QUESTION_TEMPLATE.format(question=item.question), item.choices
    return [(context, " " + choice) for choice in choices], [len(choice) for choice in choices]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's causal _encode_pair: the context's trailing
    whitespace moves to the continuation, then the continuation's ids are those of the whole
    string after the context's own encoding."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids):]


def argmax(values: list[float]) -> int:
    """Index of the largest value, the first on a tie (as numpy.argmax)."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def cloze_rows(model, tokenizer, records: list[dict], ids: list[int], task: str, *, batch_size: int,
               show_progress: bool = True) -> list[dict]:
    """Per-example rows for records[ids]: {"id", "choices" (texts), "scores" (summed log-probs),
    "extracted" (the acc prediction's answer word), "pred_norm" (acc_norm's), "gold", "correct",
    "correct_norm"}."""
    task = resolve_task(task)
    items = [parse_record(records[i], task, i) for i in ids]
    requests = [cloze_requests(item, task) for item in items]
    pairs = []
    for i, (pair_list, _) in zip(ids, requests):
        for k, (context, continuation) in enumerate(pair_list):
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
            if not context_ids or not continuation_ids:
                raise ValueError(f"{task}: record {i}: choice {k + 1} leaves the "
                                 f"{'context' if not context_ids else 'continuation'} without tokens")
            pairs.append((context_ids, continuation_ids))
    flat = score_token_pairs(model, pairs, pad_token_id(tokenizer), batch_size=batch_size, show_progress=show_progress)
    rows, at = [], 0
    for i, item, (pair_list, lengths) in zip(ids, items, requests):
        scores, at = flat[at:at + len(pair_list)], at + len(pair_list)
        pred = argmax(scores)
        pred_norm = argmax([s / n if n else float("-inf") for s, n in zip(scores, lengths)])
        gold = item.words[item.gold]
        rows.append({"id": i, "choices": item.choices, "scores": scores, "extracted": item.words[pred],
                     "pred_norm": item.words[pred_norm], "gold": gold, "correct": pred == item.gold,
                     "correct_norm": pred_norm == item.gold})
    return rows
