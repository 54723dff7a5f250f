"""What the model is trained to say: the answer LABEL ("the correct answer is answer2"), the chosen
option's TEXT ("the correct answer is a bacterial population in the bloodstream"), or, with no
instruction template at all, the gold choice as the CLOZE continuation of its question
("Question: ...\nAnswer:" + " a bacterial population in the bloodstream"; data/cloze.py).

`--answer_format label` is the published datasets' own response. `text` rewrites it with the text of
the gold option, parsed from the instruction as the cloze mode parses it (data/questions.py); boolq's
true/false are already text and stay. A 135M model does not learn to map questions to answer1..answer5
within thousands of examples, but it can learn to name the right option's text
(docs/experiments/smollm2_20261124/README.md).

Evaluation scores every offered option as the response to the same prompt (eval/loglik.py):
label format: RESPONSE_PREFIX + the answer word; text format: RESPONSE_PREFIX + the option's text;
cloze format: every choice's continuation after its context, as `--eval_mode cloze` (eval/cloze.py),
which is how a cloze-format run is evaluated by default. Validation accuracy scores the same way
(`scored_choices`): text format by the summed score (acc), cloze format by the summed score over the
choice's length in characters (acc_norm, lm-eval's headline for ARC and OBQA).
"""
from data.choices import answer_words, record_choices
from data.cloze import cloze_train_example, encoded_requests
from data.questions import FORMATS, parse_record
from data.tasks import ANSWER_WORDS
from utils.errors import BadInput

ANSWER_FORMATS = ("label", "text", "cloze")
RESPONSE_PREFIX = "the correct answer is "


def where(index: int | None) -> str:
    """The message prefix naming a record by its index (None: the caller names it)."""
    return "" if index is None else f"record {index}: "


def record_task(record: dict, index: int | None) -> str:
    """The record's task: its "task" tag, else (untagged Commonsense-170K records) the first task whose
    instruction opening and answer vocabulary fit it (ARC, OBQA and SIQA parse alike)."""
    if record.get("task"):
        return record["task"]
    words = answer_words(record) or []
    instruction = record.get("instruction") or ""
    for task, (opening, _) in FORMATS.items():
        if instruction.startswith(opening) and words and set(words) <= set(ANSWER_WORDS[task]):
            return task
    raise BadInput(f"{where(index)}no task's instruction opening and answer words fit it, so its "
                   "options cannot be parsed for --answer_format text")


def options(record: dict, index: int | None, answer_format: str, task: str | None = None
            ) -> tuple[list[str], list[str]]:
    """(offered answer words, the option strings scored for them) of one record of `task` (default:
    the record's): the words themselves (label format, and boolq in both formats), or the options'
    texts (text format); ValueError naming the record when its options cannot be parsed."""
    if answer_format not in ANSWER_FORMATS:
        raise BadInput(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
    if answer_format == "cloze":
        raise BadInput("the cloze answer format offers no responses to score: evaluate it with --eval_mode "
                       "cloze, or name a response format with --answer_format label|text")
    if answer_format == "label":
        task = task or record.get("task")
        words = record_choices(record, task) if task else answer_words(record) or []
        return words, words
    task = task or record_task(record, index)
    if task == "boolq":
        words = record_choices(record, task)
        return words, words
    item = parse_record(record, task, index)
    return item.words, item.choices


def candidate_response(option: str) -> str:
    """The response string scored for an option (the training target text without EOS)."""
    return RESPONSE_PREFIX + option


def with_answer_format(record: dict, index: int | None, answer_format: str) -> dict:
    """The record with its response written in `answer_format` (label: unchanged)."""
    if answer_format == "label":
        return record
    words, texts = options(record, index, answer_format)
    if record.get("answer") not in words:
        raise BadInput(f"{where(index)}answer {record.get('answer')!r} is not one of its options "
                       f"{'/'.join(words)}")
    return {**record, "output": candidate_response(texts[words.index(record["answer"])])}


def train_example(protocol, tokenizer, record: dict, index: int | None, answer_format: str, cutoff_len: int,
                  train_on_inputs: bool) -> dict:
    """dict(input_ids, labels) of one training record in `answer_format`: the protocol's prompt and the
    response (label, text), or the gold choice's cloze request (cloze; no protocol, no template)."""
    if answer_format == "cloze":
        return cloze_train_example(tokenizer, record, record_task(record, index), cutoff_len, train_on_inputs, index)
    return protocol.train_example(tokenizer, with_answer_format(record, index, answer_format), cutoff_len,
                                  train_on_inputs)


def scored_choices(protocol, tokenizer, record: dict, answer_format: str
                   ) -> tuple[list[tuple[list[int], list[int]]], int, list[int] | None]:
    """What validation accuracy scores for one record (text and cloze formats): ([(context ids,
    continuation ids) per option], gold index, the lengths its score is divided by, or None: the
    summed score). Text: the protocol's evaluation prompt and each option's response, as --eval_mode
    loglik scores them; cloze: each choice's request, as --eval_mode cloze scores them (acc_norm)."""
    if answer_format == "cloze":
        pairs, lengths, item = encoded_requests(tokenizer, record, record_task(record, None), None)
        return pairs, item.gold, lengths
    words, texts = options(record, None, answer_format)
    prompt = protocol.eval_prompt_ids(tokenizer, record)
    responses = [tokenizer(candidate_response(t), add_special_tokens=False)["input_ids"] for t in texts]
    return [(prompt, r) for r in responses], words.index(record["answer"]), None
