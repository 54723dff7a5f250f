"""Small model helpers shared by generation and scoring."""
from contextlib import contextmanager

import torch


def model_device(model) -> torch.device:
    """The device of the model's (first) parameters; inputs are moved there."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextmanager
def eval_mode(model):
    """Run with dropout off and no autograd, then restore the model's previous train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs; a peft model
    passes it through to its base model)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
