"""The one padding helper, the one pad-id rule and the shifted cross-entropy of the project (over full
logits, or over logits computed only where a label is)."""
import torch
import torch.nn.functional as F

from utils.errors import BadInput

IGNORE_INDEX = -100  # label value ignored by torch.nn.functional.cross_entropy


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (the project sets pad = eos); error if neither."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise BadInput("tokenizer has neither a pad nor an EOS token; cannot pad batches")


def pad(sequences: list[list[int]], value: int, side: str = "right", width: int | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): `sequences` padded with `value` on the `side` ("right" keeps real tokens at
    positions 0..L-1, "left" ends every row at the last column) to `width` (default: the longest);
    mask is 1 on real tokens and 0 on padding."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences) if width is None else width
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
            ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
    return ids, mask


def shifted_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Σ next-token cross-entropy over the labelled positions, and their count:
    the token at position t is predicted by the logits at t − 1; labels of IGNORE_INDEX carry no loss."""
    labels = labels[:, 1:]
    logits = logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


def kept_ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Σ cross-entropy of (N, vocabulary) logits already taken at the labelled positions against their
    N target tokens, and N: shifted_ce_sum without the positions that carry no loss."""
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())
