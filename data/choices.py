"""Which answer words a question offers.

Every LLM-Adapters instruction ends with a line such as ``Answer format: answer1/answer2/answer3``.
Most tasks always offer their whole vocabulary, but ARC questions offer 3, 4 or 5 choices, so the
number of choices is read from that line. This one parser is shared by the chance baseline
(metrics.chance_accuracy) and the log-likelihood candidates (loglik / evaluate), so both always
agree on what a question offers.
"""
import re

from data.tasks import ANSWER_WORDS, resolve_task

_FORMAT_LINE = re.compile(r"Answer format:\s*([^\n]*)", re.IGNORECASE)


def offered_choices(instruction: str, task: str) -> list[str]:
    """The answer words this question offers, in the listed order (lowercase, canonical).

    Parsed from the last "Answer format: w1/w2/..." line of `instruction`; words that are not in
    the task vocabulary are ignored. Falls back to the full task vocabulary when there is no such
    line or it names no vocabulary word.
    """
    vocab = ANSWER_WORDS[resolve_task(task)]
    matches = _FORMAT_LINE.findall(instruction or "")
    if matches:
        listed = [word.strip().lower() for word in matches[-1].split("/")]
        offered = [word for word in vocab if word in listed]
        if offered:
            return offered
    return list(vocab)


def record_choices(record: dict, task: str) -> list[str]:
    """offered_choices for a data record ({"instruction", "input", "output", "answer"})."""
    return offered_choices(record.get("instruction", ""), task)


def answer_words(record: dict) -> list[str] | None:
    """The answer words a training record offers: its task's (task-tagged records), else the words
    of its "Answer format:" line (untagged Commonsense-170K records); None when neither is known."""
    if record.get("task"):
        return record_choices(record, record["task"])
    found = _FORMAT_LINE.findall(record.get("instruction") or "")
    words = [w.strip().lower() for w in found[-1].split("/")] if found else []
    return [w for w in words if w] or None
