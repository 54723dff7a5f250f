"""One LLM-Adapters multiple-choice record -> its question, choice texts and gold choice.

The choices are the text after the markers ``Answer1: ... Answer2: ...`` (``Solution1:`` piqa,
``Option1:`` winogrande, ``Ending1:`` hellaswag), the last one running up to "Answer format:"; the
number of choices is the number of words the "Answer format:" line offers (data/choices.py). The
question is the text before the first marker, without the task's fixed instruction opening ("Please
choose the correct answer to the question: " ...). The gold index is the position of the record's
answer word (answer2 -> 1). boolq has no markers: its choices are no/yes (false/true).

Shared by the cloze evaluation (eval/cloze.py) and the text answer format (data/answer_format.py).
"""
import re
from collections.abc import Mapping
from dataclasses import dataclass

from data.choices import record_choices
from data.tasks import resolve_task
from utils.errors import BadInput

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


def parse_record(record: dict, task: str, index: int | None) -> ClozeQuestion:
    """The question, choices and gold index of an LLM-Adapters record; a one-line BadInput naming
    the task and record index when the record cannot be parsed."""
    task = resolve_task(task)
    opening, marker = FORMATS[task]

    def fail(why: str) -> BadInput:
        record_ = "the record" if index is None else f"record {index}"
        return BadInput(f"{task}: {record_} cannot be parsed into a question and its choices: {why}")

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
