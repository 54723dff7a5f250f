"""The eight commonsense benchmarks: canonical names, aliases and answer vocabularies.

The answer words are the LLM-Adapters ones; training targets ("the correct answer is X")
and evaluation extraction both use exactly these words, so they cannot drift apart.
"""
from utils.errors import BadInput

# canonical task name -> answer words, in the order the instruction lists them
ANSWER_WORDS = {
    "boolq": ["true", "false"],
    "piqa": ["solution1", "solution2"],
    "social_i_qa": ["answer1", "answer2", "answer3"],
    "hellaswag": ["ending1", "ending2", "ending3", "ending4"],
    "winogrande": ["option1", "option2"],
    "ARC-Easy": ["answer1", "answer2", "answer3", "answer4", "answer5"],
    "ARC-Challenge": ["answer1", "answer2", "answer3", "answer4", "answer5"],
    "openbookqa": ["answer1", "answer2", "answer3", "answer4"],
}
TASKS = list(ANSWER_WORDS)

# short names users type -> canonical name (matching is case-insensitive)
ALIASES = {
    "siqa": "social_i_qa",
    "hellas": "hellaswag",
    "winog": "winogrande",
    "arce": "ARC-Easy",
    "arc-e": "ARC-Easy",
    "arc_easy": "ARC-Easy",
    "arcc": "ARC-Challenge",
    "arc-c": "ARC-Challenge",
    "arc_challenge": "ARC-Challenge",
    "obqa": "openbookqa",
}


def resolve_task(name: str) -> str:
    """Canonical task name for `name` (case-insensitive, aliases allowed); ValueError if unknown."""
    key = name.strip().lower()
    for task in TASKS:
        if task.lower() == key:
            return task
    if key in ALIASES:
        return ALIASES[key]
    raise BadInput(
        f"unknown task {name!r}; known tasks: {', '.join(TASKS)} "
        f"(aliases: {', '.join(sorted(ALIASES))})"
    )
