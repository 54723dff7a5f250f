"""Forgetting: language-modelling loss on held-out general text, base model vs adapted model.

No pretraining text is available offline, so the stand-in is the QUESTIONS of a commonsense task's
TEST file (default piqa): from each record's `instruction`, the first paragraph with the template
prefix ("Please choose the correct solution to the question: ", "Please answer the following question
with true or false, question: ", ...) removed, i.e. no candidate answers, no gold answer, no prompt
template. N of them (a seeded sample) are scored as plain text: the token-weighted mean next-token
negative log-likelihood (nats/token) over all texts, each text tokenised on its own (with the
tokenizer's default special tokens, e.g. Llama's BOS), truncated to `max_len` tokens. The training
runs never see test files, so the text is held out; it is closer to the fine-tuning domain than
pretraining text would be, which makes it a conservative (small) measure of forgetting.
"""
import random
import re
from pathlib import Path

import torch

from utils.batching import IGNORE_INDEX, pad, pad_token_id, shifted_ce_sum

TEMPLATE_PREFIX = re.compile(r"^Please [^:]*:\s*")


def question_from_instruction(instruction: str) -> str:
    """The bare question of an LLM-Adapters instruction (first paragraph, template prefix removed)."""
    first = instruction.strip().split("\n\n", 1)[0].strip()
    return TEMPLATE_PREFIX.sub("", first, count=1).strip()


def forgetting_texts(data_dir, task: str, n: int, seed: int = 0) -> list[str]:
    """N questions (seeded sample, file order kept) from <data_dir>/<task>/test.json."""
    from data.commonsense import load_task_split

    records = load_task_split(Path(data_dir), task, "test")
    texts = [q for q in (question_from_instruction(r["instruction"]) for r in records) if q]
    if n >= len(texts):
        return texts
    keep = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in keep]


@torch.no_grad()
def lm_loss(model, tokenizer, texts: list[str], batch_size: int, max_len: int) -> tuple[float, int]:
    """(token-weighted mean next-token NLL in nats, number of scored tokens) over `texts`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    pad_id = pad_token_id(tokenizer)
    for i in range(0, len(texts), batch_size):
        ids = [tokenizer(t, truncation=True, max_length=max_len)["input_ids"]
               for t in texts[i:i + batch_size]]
        input_ids, mask = pad(ids, pad_id, "right")
        input_ids, mask = input_ids.to(device), mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss, n = shifted_ce_sum(logits, input_ids.masked_fill(mask == 0, IGNORE_INDEX))
        total += loss.item()
        count += n
    model.train(was_training)
    return (total / count if count else float("nan")), count
