"""Turning records into (input_ids, labels) and padding them into batches.

input_ids = prompt tokens (with the tokenizer's own BOS convention) + response tokens + EOS;
labels = -100 on the prompt tokens (no loss on the question) and the token ids on the
response, so the loss is taken on "the correct answer is X</s>" only.
"""
import torch

from data.commonsense import DataError
from data.prompt import encode_prompt, encode_response, generate_prompt
from utils.batching import IGNORE_INDEX, pad, pad_token_id


def adds_bos(tokenizer) -> bool:
    """True if the tokenizer prepends its BOS token when encoding a prompt (Llama does, GPT-2 not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and encode_prompt(tokenizer, "a")[:1] == [bos]


def tokenize_record(tokenizer, record: dict, cutoff_len: int, train_on_inputs: bool) -> dict:
    """Token ids and labels of one record: dict(input_ids=list[int], labels=list[int]).

    If prompt + response exceed `cutoff_len` tokens, the PROMPT is truncated from the left (the
    question's end and "### Response:" stay), keeping a leading BOS token; the response is never
    truncated. DataError if the response (plus BOS) alone does not fit.
    """
    if cutoff_len < 1:
        raise DataError(f"cutoff_len must be >= 1, got {cutoff_len}")
    prompt_ids = encode_prompt(tokenizer, generate_prompt(record["instruction"], record.get("input")))
    resp_ids = encode_response(tokenizer, record["output"])

    if len(prompt_ids) + len(resp_ids) > cutoff_len:
        keep_bos = adds_bos(tokenizer) and prompt_ids[:1] == [tokenizer.bos_token_id]
        head, body = (prompt_ids[:1], prompt_ids[1:]) if keep_bos else ([], prompt_ids)
        room = cutoff_len - len(head) - len(resp_ids)  # prompt tokens we may keep after BOS
        if room < 0:
            raise DataError(
                f"response {record['output'][:60]!r} is {len(resp_ids)} tokens (with EOS)"
                f"{' + BOS' if keep_bos else ''}, more than cutoff_len={cutoff_len}"
            )
        prompt_ids = head + body[len(body) - room:]

    input_ids = prompt_ids + resp_ids
    if train_on_inputs:
        labels = list(input_ids)
    else:
        labels = [IGNORE_INDEX] * len(prompt_ids) + resp_ids
    return {"input_ids": input_ids, "labels": labels}


class Collator:
    """Pads tokenized records on the RIGHT to the longest in the batch (optionally rounded up to
    a multiple of `pad_to_multiple_of`): input_ids with the pad id (the tokenizer's pad token,
    else EOS), labels with -100, attention_mask 1 on real tokens and 0 on padding."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        """Take the pad id from `tokenizer` (pad token, falling back to EOS)."""
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_id = pad_token_id(tokenizer)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Batch of dict(input_ids, labels) -> dict(input_ids, attention_mask, labels) long tensors."""
        if not features:
            raise ValueError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m
        for i, f in enumerate(features):
            if len(f["labels"]) != len(f["input_ids"]):
                raise ValueError(f"batch item {i}: {len(f['input_ids'])} input_ids but {len(f['labels'])} labels")
        input_ids, attention_mask = pad([f["input_ids"] for f in features], self.pad_id, "right", length)
        labels, _ = pad([f["labels"] for f in features], IGNORE_INDEX, "right", length)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
