"""Prompting, tokenisation, decoding and answer-extraction protocols, one object each.

`--protocol` picks one; it fixes, for training AND evaluation, everything that decides a number:

| | `clean` (this project's) | `llm_adapters` (finetune.py, commonsense_evaluate.py) | `hira` (format_inputs.py, train_hira.py) |
|---|---|---|---|
| train prompt | Alpaca, no indentation | Alpaca with 16-space indentation, "request. " / "request.  " | HiRA's template, `input` ignored |
| eval prompt | = train prompt | a different string (see JSON), `input` ignored | = train prompt, target '' |
| BOS | tokenizer's own (prompt encoded alone) | tokenizer's own (whole text encoded) | train: none; eval: BOS + prompt |
| target end | EOS | EOS when it fits (`len < cutoff`) | none (target cut to 16 tokens) |
| loss on | response (`--train_on_inputs` adds the prompt) | every token (train_on_inputs on) | answer only |
| truncation | prompt from the left | whole text from the right | prompt from the right |
| decoding | greedy, 32 new tokens | 4 beams, 32 new tokens | 4 beams, 16 new tokens |
| post-processing | new tokens, special tokens skipped | whole text, `split("### Response:")[1].strip()` | new tokens, cut at EOS, "Q:", "R:" |
| extraction | first answer word, case-insensitive, word boundaries | first regex match, case-sensitive, no boundaries | same regex, on prediction AND gold `output` |

The strings and rules are those of ../shared/protocols/published_protocols.json (copied verbatim from
the two pipelines' sources; tests compare them byte for byte). Padding is this project's (right in
training, left in generation, with attention masks); the pipelines' own left padding in training
shifts absolute positions, which RoPE models do not see (up to rounding).
"""
import re
from functools import lru_cache

from data.prompt import encode_prompt, generate_prompt
from data.tokenize import tokenize_record
from data.tasks import ANSWER_WORDS, resolve_task
from utils.batching import IGNORE_INDEX
from utils.errors import BadInput

# ---- LLM-Adapters (AGI-Edgerunners/LLM-Adapters @ 8166572) --------------------------------------
LLM_ADAPTERS_TRAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    "                ### Instruction:\n                {instruction}\n                \n"
    "                ### Input:\n                {input}\n                \n"
    "                ### Response:\n                {output}")
LLM_ADAPTERS_TRAIN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.  \n\n                ### Instruction:\n                {instruction}\n                \n"
    "                ### Response:\n                {output}")
LLM_ADAPTERS_EVAL_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "                ### Instruction:\n                {instruction}\n\n"
    "                ### Input:\n                {input}\n\n                ### Response:\n                ")
LLM_ADAPTERS_EVAL_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request. \n\n                ### Instruction:\n                {instruction}\n\n"
    "                ### Response:\n                ")
# the published extraction regexes (commonsense_evaluate.py extract_answer; HiRA's are the same)
PUBLISHED_PATTERNS = {
    "boolq": "true|false",
    "piqa": "solution1|solution2",
    "social_i_qa": "answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": "answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": "answer1|answer2|answer3|answer4|answer5",
    "openbookqa": "answer1|answer2|answer3|answer4|answer5",
    "hellaswag": "ending1|ending2|ending3|ending4",
    "winogrande": "option1|option2",
}
# ---- HiRA (hqsiswiliam/hira @ f75f0cf) -----------------------------------------------------------
HIRA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately "
                 "completes the request.  \n\n### Instruction:\n{cinput}\n\n### Response:\n{target}")
HIRA_TARGET_TOKENS = 16


def published_extract(text: str, task: str) -> str | None:
    """re.findall(pattern, text.strip())[0]: the first match, case-sensitive, no word boundaries
    ("untrue" gives "true"); None (scored wrong) when nothing matches."""
    found = re.findall(PUBLISHED_PATTERNS[resolve_task(task)], (text or "").strip())
    return found[0] if found else None


@lru_cache(maxsize=None)
def _word_pattern(task: str) -> re.Pattern:
    words = sorted(ANSWER_WORDS[task], key=len, reverse=True)  # longest first, for safety
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def word_extract(text: str, task: str) -> str | None:
    """The first answer word of `task` in `text`, case-insensitive, on word boundaries ("answer1" is
    not found in "answer12", "true" not in "untrue"); lowercase canonical form, or None."""
    match = _word_pattern(resolve_task(task)).search(text or "")
    return match.group(1).lower() if match else None


class Protocol:
    """One published (or this project's) pipeline. Defaults of the settings it fixes:"""

    name: str
    train_on_inputs = False
    num_beams = 1
    max_new_tokens = 32

    def train_example(self, tokenizer, record: dict, cutoff_len: int, train_on_inputs: bool) -> dict:
        """dict(input_ids, labels) of one training record."""
        raise NotImplementedError

    def eval_prompt_ids(self, tokenizer, record: dict) -> list[int]:
        raise NotImplementedError

    def answer_text(self, tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
        """The generated answer text the extraction reads."""
        return tokenizer.decode(new_ids, skip_special_tokens=True)

    def extract(self, text: str, task: str) -> str | None:
        return published_extract(text, task)

    def gold(self, record: dict, task: str) -> str:
        """The reference the extracted prediction is compared with."""
        return record["answer"]


class Clean(Protocol):
    """This project's protocol (the default before protocols existed); data/prompt.py's template."""

    name = "clean"

    def train_example(self, tokenizer, record, cutoff_len, train_on_inputs):
        return tokenize_record(tokenizer, record, cutoff_len, train_on_inputs)

    def eval_prompt_ids(self, tokenizer, record):
        return encode_prompt(tokenizer, generate_prompt(record["instruction"], record.get("input")))

    def extract(self, text, task):
        return word_extract(text, task)


class LLMAdapters(Protocol):
    """LLM-Adapters: finetune.py (train) and commonsense_evaluate.py (eval), as published."""

    name = "llm_adapters"
    train_on_inputs = True
    num_beams = 4
    max_new_tokens = 32

    @staticmethod
    def train_prompt(record: dict, output: str) -> str:
        template = LLM_ADAPTERS_TRAIN_WITH_INPUT if record.get("input") else LLM_ADAPTERS_TRAIN_NO_INPUT
        return template.format(instruction=record["instruction"], input=record.get("input"), output=output)

    def train_example(self, tokenizer, record, cutoff_len, train_on_inputs):
        def tokenize(text, add_eos):  # finetune.py tokenize(): truncation from the right, then EOS
            ids = tokenizer(text, truncation=True, max_length=cutoff_len)["input_ids"]
            if add_eos and ids[-1] != tokenizer.eos_token_id and len(ids) < cutoff_len:
                ids = ids + [tokenizer.eos_token_id]
            return ids

        ids = tokenize(self.train_prompt(record, record["output"]), add_eos=True)
        labels = list(ids)
        if not train_on_inputs:  # the prompt with an empty output, without EOS, is masked
            n = len(tokenize(self.train_prompt(record, ""), add_eos=False))
            labels = [IGNORE_INDEX] * n + labels[n:]
        return {"input_ids": ids, "labels": labels[:len(ids)]}

    def eval_prompt_ids(self, tokenizer, record):
        # commonsense_evaluate.py calls generate_prompt(instruction): the input field is ignored
        return tokenizer(LLM_ADAPTERS_EVAL_NO_INPUT.format(instruction=record["instruction"]))["input_ids"]

    def answer_text(self, tokenizer, prompt_ids, new_ids):
        text = tokenizer.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
        parts = text.split("### Response:")
        return parts[1].strip() if len(parts) > 1 else ""


class HiRAProtocol(Protocol):
    """HiRA: dataset/format_inputs.py (template 4, context frozen), train_hira.py (decoding and
    post-processing) and eval_commonsense.py (extraction)."""

    name = "hira"
    num_beams = 4
    max_new_tokens = 16

    @staticmethod
    def context(record: dict) -> str:
        return HIRA_TEMPLATE.format(cinput=record["instruction"], target="")

    def train_example(self, tokenizer, record, cutoff_len, train_on_inputs):
        ctx = tokenizer(self.context(record), add_special_tokens=False, truncation=True,
                        max_length=cutoff_len)["input_ids"]
        target = tokenizer(record["output"].strip(), add_special_tokens=False, truncation=True,
                           max_length=HIRA_TARGET_TOKENS)["input_ids"]
        labels = (list(ctx) if train_on_inputs else [IGNORE_INDEX] * len(ctx)) + target
        return {"input_ids": ctx + target, "labels": labels}

    def eval_prompt_ids(self, tokenizer, record):
        return tokenizer(f"{tokenizer.bos_token or ''}{self.context(record)}", add_special_tokens=False)["input_ids"]

    def answer_text(self, tokenizer, prompt_ids, new_ids):
        text = tokenizer.decode(new_ids, skip_special_tokens=False)
        if tokenizer.pad_token and tokenizer.pad_token != tokenizer.eos_token:
            text = text.replace(tokenizer.pad_token, "")
        for keyword in (tokenizer.eos_token, "Q:", "R:"):
            if keyword and keyword in text:
                text = text[:text.index(keyword)]
        return text

    def gold(self, record, task):
        return published_extract(record["output"], task)


PROTOCOLS = {p.name: p for p in (HiRAProtocol(), LLMAdapters(), Clean())}
DEFAULT_PROTOCOL = "hira"


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise BadInput(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def answer_slot(protocol: Protocol, tokenizer, record: dict, cutoff_len: int) -> tuple[int, list[int], int] | None:
    """Where a training example's answer is decided, for the validation accuracy: (position t whose
    logits predict the answer token, the token each offered answer word puts at t + 1, index of the
    gold word), or None when the record's answer words or gold answer are unknown.

    Each offered word w is put in the record's output in place of the gold one and tokenised as the
    protocol tokenises training examples; t + 1 is the first token index at which any of them differs
    from the gold example. For the commonsense vocabularies (true/false, answer1..5, solution1/2,
    option1/2, ending1..4) the words differ in exactly that one token, so comparing the logits there
    ranks the whole answers with one forward of the gold example.
    """
    from data.choices import answer_words

    words, gold = answer_words(record), record.get("answer")
    if not words or gold not in words or gold not in record["output"]:
        return None
    head, _, tail = record["output"].rpartition(gold)  # the answer is the LAST occurrence of the gold word
    ids = [protocol.train_example(tokenizer, {**record, "output": head + w + tail}, cutoff_len, False)["input_ids"]
           for w in words]
    gold_ids = ids[words.index(gold)]
    points = [d for d in (first_difference(c, gold_ids) for c in ids) if d is not None]
    if not points:
        return None
    d = min(points)
    if d == 0 or any(len(c) <= d for c in ids):  # an example ends there (e.g. cut by truncation): no slot
        return None
    return d - 1, [c[d] for c in ids], words.index(gold)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index at which two token lists differ (one ending there counts), None when equal."""
    k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return k if k is not None or len(a) == len(b) else min(len(a), len(b))
