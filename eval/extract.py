"""Extract the predicted answer word from generated text.

Protocol (decided here, documented once):

* Candidates are the task's answer words (data.tasks.ANSWER_WORDS), i.e. the same words the
  training targets use ("the correct answer is <word>").
* Matching is case-INSENSITIVE ("Answer2", "TRUE" count); the canonical lowercase word is returned.
* Matches need word boundaries (regex ``\\b`` on both sides): "answer1" does not match inside
  "answer12", "true" does not match inside "untrue" or "trueness", "solution2" does not match
  "solution2b". Punctuation, whitespace and string ends are boundaries, so "answer3." and
  "(true)" match. Underscores and digits are word characters, so "answer_1" matches nothing.
* The FIRST (leftmost) match wins, so "answer2, not answer1" -> "answer2".
* Every vocabulary word is a candidate, even if this question offers fewer choices (a 4-choice
  ARC question answered "answer5" is extracted as "answer5" and simply scored wrong).
* No candidate in the text -> None (counted as a parse failure, and as incorrect).
"""
import re
from functools import lru_cache

from data.tasks import ANSWER_WORDS, resolve_task


@lru_cache(maxsize=None)
def _pattern(task: str) -> re.Pattern:
    words = sorted(ANSWER_WORDS[task], key=len, reverse=True)  # longest first, for safety
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def extract_answer(text: str, task: str) -> str | None:
    """The first answer word of `task` in `text` (lowercase canonical form), or None if none."""
    match = _pattern(resolve_task(task)).search(text or "")
    return match.group(1).lower() if match else None
