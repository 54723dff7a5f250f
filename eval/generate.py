"""Batched answer generation (greedy by default), left-padded, with the KV cache.

Prompts come as token ids (the protocol's evaluation prompt, data/protocols.py) or as text (encoded
with data.prompt.encode_prompt, the clean protocol), and are left-padded by hand,
so the tokenizer's own padding_side is never read or changed. The attention mask marks the pad
positions; for GPT-Neo, GPT-2 and Llama, `model.generate` derives position ids from that mask,
so a prompt's continuation does not depend on what else is in its batch (tested:
batch size 1 and 8 give identical strings).
"""
from tqdm.auto import tqdm

from data.prompt import encode_prompt
from eval.runtime import eval_mode, model_device
from utils.batching import pad, pad_token_id


def encoded(tokenizer, prompts) -> list[list[int]]:
    """Prompt token ids: as given, or text encoded with the tokenizer's own BOS convention."""
    return [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]


def generate_answers(model, tokenizer, prompts, *, batch_size: int, max_new_tokens: int, beam_size: int,
                     show_progress: bool = True, decode=None) -> list[str]:
    """The model's continuation of each prompt: decode(prompt_ids, new_ids), by default the new
    text with special tokens skipped.

    Greedy decoding when beam_size == 1 (do_sample=False), else beam search with `beam_size`
    beams; generation stops at the tokenizer's EOS (the token training appends to responses).
    Prompts are sorted by length so batches carry little padding; results come back in the
    original order.
    """
    if batch_size < 1 or beam_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size, beam_size and max_new_tokens must be >= 1")
    pad_id = pad_token_id(tokenizer)
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_id
    encoded_prompts = encoded(tokenizer, prompts)
    if decode is None:
        def decode(prompt_ids, new_ids):
            return tokenizer.decode(new_ids, skip_special_tokens=True)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded_prompts[i]), reverse=True)
    device = model_device(model)
    outputs: list[str | None] = [None] * len(prompts)

    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc="generate",
                          disable=not show_progress):
            batch = order[start:start + batch_size]
            input_ids, attention_mask = pad([encoded_prompts[i] for i in batch], pad_id, "left")
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=beam_size,
                num_return_sequences=1,
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
            new_tokens = generated[:, input_ids.shape[1]:].cpu()
            for row, index in enumerate(batch):
                outputs[index] = decode(encoded_prompts[index], new_tokens[row].tolist())
    return outputs
