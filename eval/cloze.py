"""Cloze scoring (`--eval_mode cloze`): each choice's TEXT scored as a continuation, as lm-eval scores
its multiple-choice tasks (ARC, PIQA, HellaSwag, WinoGrande, ...).

A model that cannot yet map questions to "answer1..answer5" can still know which answer is right;
this measures that, e.g. accuracy before vs after fine-tuning, with no answer word to learn.

Parsing (one LLM-Adapters record -> question, choice texts, gold index): the choices are the text
after the markers ``Answer1: ... Answer2: ...`` (``Solution1:`` piqa, ``Option1:`` winogrande,
``Ending1:`` hellaswag), the last one running up to "Answer format:"; the number of choices is the
number of words the "Answer format:" line offers (data/choices.py). The question is the text before
the first marker, without the task's fixed instruction opening ("Please choose the correct answer to
the question: " ...). The gold index is the position of the record's answer word (answer2 -> 1).

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
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from data.choices import record_choices
from data.tasks import resolve_task
from eval.runtime import eval_mode, model_device
from utils.batching import pad, pad_token_id

PROTOCOL_NAME = "cloze (lm-eval style)"

_ASK = "Please choose the correct answer to the question: "
# task -> (the instruction's fixed opening, the choice marker word)
FORMATS = {
    "boolq": ("Please answer the following question with true or false, question: ", None),
    "piqa": ("Please choose the correct solution to the question: ", "Solution"),
    "social_i_qa": (_ASK, "Answer"),
    "hellaswag": ("Please choose the correct ending to complete the given sentence: ", "Ending"),
    "winogrande": ("Please choose the correct answer to fill in the blank to complete the given sentence: ",
                   "Option"),
    "ARC-Easy": (_ASK, "Answer"),
    "ARC-Challenge": (_ASK, "Answer"),
    "openbookqa": (_ASK, "Answer"),
}
QUESTION_TEMPLATE = "Question: {question}\nAnswer:"
BOOLQ_TEMPLATE = "{question}?\nAnswer:"
BOOLQ_CHOICES = {"false": "no", "true": "yes"}  # answer word -> choice text, in scoring order

_FORMAT_AT = re.compile(r"\s*Answer format:", re.IGNORECASE)


@dataclass(frozen=True)
class ClozeQuestion:
    """One parsed record: the question text, the choice texts, the answer word of each choice
    (answer1, ... ; boolq: false, true) and the index of the gold choice."""

    question: str
    choices: list[str]
    words: list[str]
    gold: int


def parse_record(record: dict, task: str, index: int) -> ClozeQuestion:
    """The question, choices and gold index of an LLM-Adapters record; a one-line ValueError naming
    the task and record index when the record cannot be parsed."""
    task = resolve_task(task)
    opening, marker = FORMATS[task]

    def fail(why: str) -> ValueError:
        return ValueError(f"{task}: record {index} cannot be parsed for cloze scoring: {why}")

    instruction = record.get("instruction") if isinstance(record, Mapping) else None
    if not isinstance(instruction, str):
        raise fail("no 'instruction' string")
    if not instruction.startswith(opening):
        raise fail(f"the instruction does not start with {opening.strip()!r}")
    formats = list(_FORMAT_AT.finditer(instruction))
    if not formats:
        raise fail("no 'Answer format:' line")
    body = instruction[len(opening):formats[-1].start()]
    words = record_choices(record, task)
    answer = record.get("answer")
    if marker is None:  # boolq: the question, ending with the "?" LLM-Adapters appended
        question = body.strip()
        question = question[:-1] if question.endswith("?") else question
        if not question:
            raise fail("empty question")
        words = list(BOOLQ_CHOICES)
        if answer not in words:
            raise fail(f"answer {answer!r} is not one of {'/'.join(words)}")
        return ClozeQuestion(question, [BOOLQ_CHOICES[w] for w in words], words, words.index(answer))

    starts, ends, position = [], [], 0
    for k in range(1, len(words) + 1):
        found = re.compile(rf"(?:^|(?<=\s)){marker}{k}:").search(body, position)
        if found is None:
            raise fail(f"no '{marker}{k}:' (the answer format offers {len(words)} choices)")
        starts.append(found.start())
        ends.append(found.end())
        position = found.end()
    question = body[:starts[0]].strip()
    choices = [body[ends[k]:starts[k + 1] if k + 1 < len(starts) else len(body)].strip()
               for k in range(len(starts))]
    if not question:
        raise fail("empty question")
    empty = [k + 1 for k, c in enumerate(choices) if not c]
    if empty:
        raise fail(f"empty {marker}{empty[0]}")
    if answer not in words:
        raise fail(f"answer {answer!r} is not one of the offered {'/'.join(words)}")
    if task == "winogrande" and not question.partition("_")[2].strip():
        raise fail("the sentence has no '_' blank followed by text")
    return ClozeQuestion(question, choices, words, words.index(answer))


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


def score_token_pairs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8,
                      show_progress: bool = True, desc: str = "cloze") -> list[float]:
    """Summed log-probability of each continuation given its context, for (context ids,
    continuation ids) pairs: batched longest first, right-padded with an attention mask (real tokens
    keep positions 0..L-1); each distinct pair is run once."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    unique = list(dict.fromkeys((tuple(c), tuple(r)) for c, r in pairs))
    for c, r in unique:
        if not c or not r:
            raise ValueError("a context and a continuation must each have at least one token")
    unique.sort(key=lambda pair: len(pair[0]) + len(pair[1]), reverse=True)
    found: dict[tuple, float] = {}
    device = model_device(model)
    with eval_mode(model):
        for start in tqdm(range(0, len(unique), batch_size), desc=desc, disable=not show_progress):
            batch = unique[start:start + batch_size]
            input_ids, attention_mask = pad([list(c + r) for c, r in batch], pad_id, "right")
            logits = model(input_ids=input_ids.to(device),
                           attention_mask=attention_mask.to(device), use_cache=False).logits
            for row, (c, r) in enumerate(batch):
                # the token at position t is predicted by the logits at position t - 1
                positions = torch.arange(len(c) - 1, len(c) + len(r) - 1, device=logits.device)
                log_probs = torch.log_softmax(logits[row, positions].float(), dim=-1)
                targets = torch.tensor(r, dtype=torch.long, device=logits.device)
                found[(c, r)] = log_probs.gather(1, targets[:, None]).sum().item()
    return [found[(tuple(c), tuple(r))] for c, r in pairs]


def _argmax(values: list[float]) -> int:
    """Index of the largest value, the first on a tie (as numpy.argmax)."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def cloze_rows(model, tokenizer, records: list[dict], ids: list[int], task: str, batch_size: int = 8,
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
    flat = score_token_pairs(model, pairs, pad_token_id(tokenizer), batch_size, show_progress)
    rows, at = [], 0
    for i, item, (pair_list, lengths) in zip(ids, items, requests):
        scores, at = flat[at:at + len(pair_list)], at + len(pair_list)
        pred = _argmax(scores)
        pred_norm = _argmax([s / n if n else float("-inf") for s, n in zip(scores, lengths)])
        gold = item.words[item.gold]
        rows.append({"id": i, "choices": item.choices, "scores": scores, "extracted": item.words[pred],
                     "pred_norm": item.words[pred_norm], "gold": gold, "correct": pred == item.gold,
                     "correct_norm": pred_norm == item.gold})
    return rows
