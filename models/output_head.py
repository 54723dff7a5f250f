"""The output layer of a causal LM run only at chosen positions: training's loss (training/loss.py, where a
label is) and evaluation's scoring (eval/scoring.py, at real tokens) share it."""
import torch


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
