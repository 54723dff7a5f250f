"""What the response names: the answer LABEL ("the correct answer is answer2") or the chosen option's
TEXT ("the correct answer is a bacterial population in the bloodstream").

`--answer_format label` is the published datasets' own response. `text` rewrites it with the text of
the gold option, parsed from the instruction as the cloze mode parses it (data/questions.py); boolq's
true/false are already text and stay. A 135M model does not learn to map questions to answer1..answer5
within thousands of examples, but it can learn to name the right option's text (README 'What the
comparison shows').

Evaluation scores every offered option as the response to the same prompt (eval/loglik.py):
label format: RESPONSE_PREFIX + the answer word; text format: RESPONSE_PREFIX + the option's text.
"""
from data.choices import answer_words, record_choices
from data.questions import FORMATS, parse_record
from data.tasks import ANSWER_WORDS

ANSWER_FORMATS = ("label", "text")
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
    raise ValueError(f"{where(index)}no task's instruction opening and answer words fit it, so its "
                     "options cannot be parsed for --answer_format text")


def options(record: dict, index: int | None, answer_format: str, task: str | None = None
            ) -> tuple[list[str], list[str]]:
    """(offered answer words, the option strings scored for them) of one record of `task` (default:
    the record's): the words themselves (label format, and boolq in both formats), or the options'
    texts (text format); ValueError naming the record when its options cannot be parsed."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
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
        raise ValueError(f"{where(index)}answer {record.get('answer')!r} is not one of its options "
                         f"{'/'.join(words)}")
    return {**record, "output": candidate_response(texts[words.index(record["answer"])])}
