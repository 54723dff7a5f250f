"""The cloze form of a record: lm-eval's (context, continuation) requests, one per choice, shared by
cloze scoring (eval/cloze.py, `--eval_mode cloze`) and cloze training (`--answer_format cloze`), so
what a run is trained on is token for token what its evaluation scores.

Requests, per task:
    ARC-Easy, ARC-Challenge, openbookqa, social_i_qa, piqa:
        "Question: {question}\\nAnswer:", " {choice}"           (lm-eval's arc_easy / piqa template)
    boolq (these files carry no passage):
        "{question}?\\nAnswer:", " no" / " yes"                  (true -> " yes")
    winogrande (lm-eval's partial scoring):
        sentence up to "_" + option, " " + the rest of the sentence after "_" (stripped)
    hellaswag:
        preprocess("{activity label}: {context}"), " " + preprocess(ending)   (lm-eval's preprocess)

Tokens (lm-eval's HFLM._encode_pair): trailing spaces of the context move to the continuation; the
context is encoded alone and context + continuation as one string (the tokenizer's own special
tokens, as `tokenizer(text)`); the continuation's tokens are the whole string's after the context's.

Training example of a record (`cloze_train_example`): the GOLD choice's request, context ids then
continuation ids; loss on the continuation (`train_on_inputs` adds the context); no instruction
template and no EOS (the score of a continuation has none). Too long for --cutoff_len: the context is
cut from the left, keeping a leading BOS (as the clean protocol cuts its prompt).
"""
import re

from data.questions import ClozeQuestion, parse_record
from data.tasks import resolve_task
from utils.batching import IGNORE_INDEX
from utils.errors import BadInput

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


def encoded_requests(tokenizer, record: dict, task: str, index: int | None
                     ) -> tuple[list[tuple[list[int], list[int]]], list[int], ClozeQuestion]:
    """([(context ids, continuation ids) per choice], acc_norm lengths, the parsed question) of one
    record; ValueError naming the record when it cannot be parsed or a side has no tokens."""
    item = parse_record(record, task, index)
    pairs, lengths = cloze_requests(item, task)
    encoded = []
    for k, (context, continuation) in enumerate(pairs):
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not context_ids or not continuation_ids:
            raise BadInput(f"{resolve_task(task)}: record {'?' if index is None else index}: choice {k + 1} leaves "
                           f"the {'context' if not context_ids else 'continuation'} without tokens")
        encoded.append((context_ids, continuation_ids))
    return encoded, lengths, item


def cloze_train_example(tokenizer, record: dict, task: str, cutoff_len: int, train_on_inputs: bool,
                        index: int | None = None) -> dict:
    """dict(input_ids, labels) of one record in the cloze answer format (the module's docstring)."""
    pairs, _, item = encoded_requests(tokenizer, record, task, index)
    context, continuation = pairs[item.gold]
    if len(context) + len(continuation) > cutoff_len:
        bos = tokenizer.bos_token_id
        head = context[:1] if bos is not None and context[:1] == [bos] else []
        room = cutoff_len - len(head) - len(continuation)
        if room < 1:
            raise BadInput(f"the gold continuation is {len(continuation)} tokens: --cutoff_len {cutoff_len} "
                           "leaves no room for its context")
        context = head + context[len(context) - room:]
    labels = (list(context) if train_on_inputs else [IGNORE_INDEX] * len(context)) + list(continuation)
    return {"input_ids": list(context) + list(continuation), "labels": labels}
