"""The task loss: the summed next-token cross-entropy over labelled tokens, with the output head run only
where a label is (models/output_head.py), and the count of those tokens that normalises it over the effective batch."""
import torch

from models.output_head import OutputHead
from utils.batching import IGNORE_INDEX, kept_ce_sum, shifted_ce_sum


def count_targets(features: list[dict]) -> int:
    """Tokens that carry loss in these examples (labels shifted by one, as in the loss)."""
    return sum(sum(1 for t in f["labels"][1:] if t != IGNORE_INDEX) for f in features)


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
