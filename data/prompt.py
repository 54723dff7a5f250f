"""The one prompt template, shared by training and evaluation (Alpaca style, as LLM-Adapters).

Tokenisation rule (the same for GPT-2/GPT-Neo, Llama and SmolLM2 tokenizers): the prompt is
encoded with the tokenizer's own special-token convention (Llama adds BOS, GPT-2/GPT-Neo and
SmolLM2 add nothing), and the response is encoded separately without special tokens and ends
with EOS. Encoding the two parts separately makes the prompt tokens identical in training and
evaluation, and makes the label mask cover exactly the prompt tokens.
"""
from utils.errors import BadInput

_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def generate_prompt(instruction: str, input: str | None = None) -> str:
    """Alpaca prompt ending in '### Response:\\n'; the model's answer follows it."""
    if input:
        return _WITH_INPUT.format(instruction=instruction, input=input)
    return _NO_INPUT.format(instruction=instruction)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids with the tokenizer's own BOS convention (used by training AND eval)."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_response(tokenizer, response: str) -> list[int]:
    """Response token ids without special tokens, terminated by EOS so the model learns to stop."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is None:
        raise BadInput("tokenizer has no EOS token; cannot terminate training targets")
    return ids + [tokenizer.eos_token_id]
