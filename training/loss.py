"""The task loss: the summed next-token cross-entropy over labelled tokens, with the output head run only
where a label is (OutputHead), and the count of those tokens that normalises it over the effective batch."""
import torch

from utils.batching import IGNORE_INDEX, kept_ce_sum, shifted_ce_sum


def count_targets(features: list[dict]) -> int:
    """Tokens that carry loss in these examples (labels shifted by one, as in the loss)."""
    return sum(sum(1 for t in f["labels"][1:] if t != IGNORE_INDEX) for f in features)


class OutputHead:
    """The output layer of a transformers causal LM, run only at chosen positions.

    `logits_at(model, batch, keep, **extra)` runs the model's ordinary forward (`extra`: more of its
    arguments, e.g. eval/scoring.py's position ids and KV cache) with a pre-hook on its output
    layer (get_output_embeddings()) that replaces the layer's input, the (batch, length, width) hidden
    states, by its rows at the positions `keep` (a batch x length bool mask), so the layer computes
    only those logits: (keep.sum(), vocabulary), row-major in `keep`. The layer runs inside the forward,
    so DDP and FSDP2 (whose root unit gathers the head's weight only there) see an ordinary forward, and
    what the model does to the layer's output (e.g. Gemma's soft-capping) is elementwise and still
    applied. `of(model)` gives None for a model without an output layer (the full-logits path)."""

    def __init__(self, head):
        self.head = head

    @classmethod
    def of(cls, model) -> "OutputHead | None":
        get = getattr(model, "get_output_embeddings", None)  # peft models pass it to their base
        head = get() if get is not None else None
        return cls(head) if isinstance(head, torch.nn.Module) else None

    def logits_at(self, model, batch: dict, keep: torch.Tensor, **extra) -> torch.Tensor:
        def gather(module, args):
            return (args[0][keep],)
        handle = self.head.register_forward_pre_hook(gather)
        try:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
        finally:
            handle.remove()


def labelled(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a labelled token (the label at t + 1 is not ignored)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def task_loss_sum(model, batch: dict, head: OutputHead | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens, and their count. With the model's
    OutputHead the head runs only where a label is: the same loss and gradients (tested to 1e-6), a
    fifth fewer FLOPs on SmolLM2 and no batch x length x vocabulary logits tensor."""
    if head is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return shifted_ce_sum(logits, batch["labels"])
    keep = labelled(batch["labels"])
    return kept_ce_sum(head.logits_at(model, batch, keep), batch["labels"][:, 1:][keep[:, :-1]])
