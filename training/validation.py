"""Validation during training: loss and accuracy (overall and per task), sharded over ranks."""
import torch

from training.loss import labelled
from utils.batching import kept_ce_sum, shifted_ce_sum


@torch.no_grad()
def validate(accelerator, model, features: list[dict], collate, batch: int, slots=None, head=None,
             choices=None, tasks=None) -> dict:
    """Validation numbers, sharded over ranks:
    val_loss         token-averaged task loss (what the training loss measures);
    val_acc          label answer format: share of records whose gold answer word scores highest among
                     the offered ones at the answer position (data.protocols.answer_slot), i.e. argmax
                     of the logits of the answer tokens there, one forward per record;
                     text and cloze answer formats: share of records whose gold option scores highest
                     (data.answer_format.scored_choices: text by the summed log-probability, as
                     --eval_mode loglik; cloze by it over the choice's length, acc_norm of --eval_mode
                     cloze); over the records with known options (val_acc_n);
    val_acc/<task>   the same over the records of each task (`tasks[i]`: features[i]'s task, None: none);
                     weighted by val_acc_n/<task> they average to val_acc;
    val_answer_loss  (label format) mean −log p(gold answer token) at that position.
    `slots[i]` is answer_slot(...) of features[i], `choices[i]` (text and cloze formats) is
    scored_choices(...) of its record; None: not scored. `head`: the model's OutputHead, or None."""
    from eval.scoring import score_token_pairs

    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(len(features)))[rank::world]
    names = sorted({t for t in tasks or () if t is not None})
    column = {t: 5 + 2 * k for k, t in enumerate(names)}  # per task: correct, scored
    # loss, n, correct, nll, scored, then the per-task pairs
    total = torch.zeros(5 + 2 * len(names), device=accelerator.device, dtype=torch.float64)

    def count(j, right: bool):
        total[2] += float(right)
        total[4] += 1
        if tasks and tasks[j] is not None:
            total[column[tasks[j]]] += float(right)
            total[column[tasks[j]] + 1] += 1

    for i in range(0, len(mine), batch):
        chunk = mine[i:i + batch]
        b = {k: v.to(accelerator.device) for k, v in collate([features[j] for j in chunk]).items()}
        with accelerator.autocast():
            if head is None:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                loss, n = shifted_ce_sum(logits, b["labels"])
            else:  # the head at the labelled positions and the answer positions only
                keep = labelled(b["labels"])
                answer = torch.zeros_like(keep)
                for row, j in enumerate(chunk):
                    if slots and slots[j] is not None:
                        answer[row, slots[j][0]] = True
                kept = head.logits_at(model, b, keep | answer)
                where = torch.cumsum((keep | answer).flatten(), 0).view_as(keep) - 1  # row of kept per position
                loss, n = kept_ce_sum(kept[where[keep]], b["labels"][:, 1:][keep[:, :-1]])
            for row, j in enumerate(chunk):
                slot = slots[j] if slots else None
                if slot is None:
                    continue
                position, token_ids, gold = slot
                at = logits[row, position] if head is None else kept[where[row, position]]
                logp = torch.log_softmax(at.float(), dim=-1)[token_ids]
                count(j, int(logp.argmax()) == gold)
                total[3] -= logp[gold].item()
            known = [j for j in chunk if choices and choices[j] is not None]
            if known:
                flat = score_token_pairs(model, [pair for j in known for pair in choices[j][0]],
                                         collate.pad_id, batch_size=batch, show_progress=False)
                for j in known:
                    pairs, gold, lengths = choices[j]
                    scores, flat = flat[:len(pairs)], flat[len(pairs):]
                    if lengths is not None:  # acc_norm: the score per character of the choice
                        scores = [s / n_chars if n_chars else float("-inf") for s, n_chars in zip(scores, lengths)]
                    count(j, max(range(len(scores)), key=lambda k: (scores[k], -k)) == gold)
        total[0] += loss.item()
        total[1] += n
    total = accelerator.reduce(total, "sum")
    model.train()
    out = {"val_loss": (total[0] / total[1]).item()}
    if total[4] > 0:
        out.update(val_acc=(total[2] / total[4]).item(), val_acc_n=int(total[4]))
        if slots:
            out["val_answer_loss"] = (total[3] / total[4]).item()
        for t in names:
            c = column[t]
            if total[c + 1] > 0:
                out.update({f"val_acc/{t}": (total[c] / total[c + 1]).item(), f"val_acc_n/{t}": int(total[c + 1])})
    return out
