"""The training loop: explicit, resumable, and identical on one process and under torchrun.

Objective per optimizer step:
    L = L_task + λ · L_reg      (KnowHiRA/HiRA: L_reg = L_ortho, λ = λ_ortho; KaSA: its β/γ terms, λ = 1)
    L_task  = Σ (token cross-entropy over response tokens of the effective batch) / N_tokens
    L_ortho = mean over adapted layers of ||A Aᵀ - I||_F² + ||Bᵀ B - I||_F²
The task loss is normalised by the number of target tokens of the WHOLE effective batch
(all micro-batches, all ranks), so 2 processes x batch b and 1 process x batch 2b give the same
gradient. Every rank can count those tokens itself because the data order is a pure function of
(seed, epoch): no communication is needed for it.

Data order: epoch e uses torch.randperm(n, generator=seed + e). Optimizer step k of an epoch takes
the global slice [k·G, (k+1)·G) with G = batch · grad_acc · world; micro-step j of rank r takes
batch examples from it. Resuming from step k therefore only needs k (plus the saved RNG states).
"""
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data.tokenize import IGNORE_INDEX, Collator
from models.dist import full, shard_model
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.logger import RunLogger, plot_losses


@dataclass
class LoopConfig:
    batch: int = 4  # per-device micro-batch
    grad_acc: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 0  # linear warmup steps
    lr_scheduler: str = "cosine"  # cosine | linear decay to 0 after warmup
    max_grad_norm: float = 1.0  # 0 disables clipping
    epoch: int = 1
    max_steps: int = -1  # > 0 overrides epoch
    seed: int = 42
    eval_strategy: str = "steps"  # steps | epoch | no
    eval_steps: int = 50
    save_steps: int = 50
    keep_checkpoints: int = 2
    early_stop_patience: int = 0  # validations without improvement before stopping; 0 = off
    log_steps: int = 1
    reg_weight: float = 1.0  # weight of the method's regulariser (λ_ortho for KnowHiRA)
    fsdp: bool = False  # FSDP2 full-shard (models.dist.shard_model) instead of DDP


@dataclass
class LoopResult:
    steps: int
    best_val_loss: float | None
    stopped_early: bool = False


class NonFiniteLoss(RuntimeError):
    pass


def lr_lambda(cfg: LoopConfig, total_steps: int):
    """Linear warmup to the peak, then cosine or linear decay to 0 at `total_steps`."""
    def f(step):
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, total_steps - cfg.warmup)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)
    return f


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


def count_targets(features: list[dict]) -> int:
    """Tokens that carry loss in these examples (labels shifted by one, as in the loss)."""
    return sum(sum(1 for t in f["labels"][1:] if t != IGNORE_INDEX) for f in features)


def task_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def validation_loss(accelerator, model, features: list[dict], collate, batch: int) -> float:
    """Token-averaged task loss over the validation set, sharded over ranks."""
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = features[rank::world]
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for i in range(0, len(mine), batch):
        b = {k: v.to(accelerator.device) for k, v in collate(mine[i:i + batch]).items()}
        with accelerator.autocast():
            loss, n = task_loss_sum(model, b)
        total += torch.tensor([loss.item(), n], device=accelerator.device, dtype=torch.float64)
    total = accelerator.reduce(total, "sum")
    model.train()
    return (total[0] / total[1]).item()


def train(accelerator, model, tokenizer, train_features: list[dict], val_features: list[dict],
          cfg: LoopConfig, run_dir, save_best, extra_loss=None) -> LoopResult:
    """Run (or resume) training. `save_best(unwrapped_model, subdir, write)` writes an adapter
    folder (called on every rank: under FSDP2 the gather is collective; only rank 0 writes);
    `extra_loss(unwrapped_model)` returns the method's unweighted regulariser (L_ortho for
    KnowHiRA), added to the loss with weight `cfg.reg_weight`; None for no regulariser.
    """
    run_dir = Path(run_dir)
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch * cfg.grad_acc * world
    steps_per_epoch = len(train_features) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_features)} training examples are fewer than one effective "
                         f"batch ({cfg.batch} x {cfg.grad_acc} x {world} = {global_batch})")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epoch * steps_per_epoch
    accelerator.print(f"effective batch = {cfg.batch} (per device) x {cfg.grad_acc} (grad_acc) x "
                      f"{world} (processes) = {global_batch}; {steps_per_epoch} steps/epoch; "
                      f"{total_steps} optimizer steps")

    if cfg.fsdp:  # torch FSDP2 directly: accelerate's FSDP plugin does not run on CPU/gloo
        ddp_model = shard_model(model)
        accelerator.print(f"FSDP2 full-shard over {world} processes: each holds 1/{world} of every "
                          "parameter, gradient and optimizer state")
    params = [p for p in model.parameters() if p.requires_grad]  # after sharding: the DTensors
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    if cfg.fsdp:
        optimizer = accelerator.prepare(optimizer)
    else:
        ddp_model, optimizer = accelerator.prepare(model, optimizer)
    collate = Collator(tokenizer)

    start_step, best_val, bad_evals = 0, None, 0
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        start_step, best_val, bad_evals = state["step"], state.get("best_val"), state.get("bad_evals", 0)
        accelerator.print(f"resumed from {ckpt} at step {start_step}")
    logger = RunLogger(run_dir, resume_step=start_step) if accelerator.is_main_process else None

    def checkpoint(step):
        accelerator.wait_for_everyone()
        save_checkpoint(run_dir / "checkpoints", step, model, optimizer, scheduler,
                        {"best_val": best_val, "bad_evals": bad_evals}, keep=cfg.keep_checkpoints,
                        write=accelerator.is_main_process)
        accelerator.wait_for_everyone()

    ddp_model.train()
    bar = tqdm(total=total_steps, initial=start_step, disable=not accelerator.is_main_process,
               desc="train", dynamic_ncols=True)
    stopped_early, t_last, tokens_since = False, time.time(), 0
    step = start_step
    while step < total_steps:
        epoch, k = divmod(step, steps_per_epoch)
        order = epoch_order(len(train_features), cfg.seed, epoch)
        chunk = [train_features[i] for i in order[k * global_batch:(k + 1) * global_batch]]
        n_targets = count_targets(chunk)  # over ALL ranks and micro-batches of this step
        loss_task = torch.zeros((), device=accelerator.device, dtype=torch.float64)
        reg_value = 0.0
        for j in range(cfg.grad_acc):
            lo = (j * world + rank) * cfg.batch
            micro = chunk[lo:lo + cfg.batch]
            b = {key: v.to(accelerator.device) for key, v in collate(micro).items()}
            tokens_since += int(b["attention_mask"].sum()) * world
            last = j == cfg.grad_acc - 1
            with accelerator.no_sync(ddp_model) if not last else nullcontext():
                with accelerator.autocast():
                    loss_sum, _ = task_loss_sum(ddp_model, b)
                    # DDP averages gradients over ranks, hence the factor `world`
                    loss = loss_sum * world / n_targets
                    if extra_loss is not None:  # + λ·L_reg, spread over the micro-steps
                        reg = extra_loss(model)
                        loss = loss + cfg.reg_weight * reg / cfg.grad_acc
                        reg_value = reg.item()
                accelerator.backward(loss)
            loss_task += loss_sum.detach().double()
        loss_task = accelerator.reduce(loss_task, "sum") / n_targets
        if not torch.isfinite(loss_task):
            raise NonFiniteLoss(f"non-finite task loss {loss_task.item()} at step {step + 1}; "
                                f"the last good checkpoint is kept in {run_dir / 'checkpoints'}")
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0
                                                else float("inf"))
        lr_now = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        record = None
        if step % cfg.log_steps == 0 or step == total_steps:
            now = time.time()
            record = {"step": step, "epoch": epoch + (k + 1) / steps_per_epoch,
                      "loss_task": loss_task.item(), "loss_reg": reg_value,
                      "loss_total": loss_task.item() + cfg.reg_weight * reg_value,
                      "lr": lr_now, "grad_norm": float(full(grad_norm)),
                      "tokens_per_s": tokens_since / max(now - t_last, 1e-9), "time": now}
            t_last, tokens_since = now, 0
            bar.set_postfix(loss=f"{record['loss_task']:.4f}", lr=f"{lr_now:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
        end_of_epoch = step % steps_per_epoch == 0
        do_eval = val_features and (
            (cfg.eval_strategy == "steps" and (step % cfg.eval_steps == 0 or step == total_steps))
            or (cfg.eval_strategy == "epoch" and (end_of_epoch or step == total_steps)))
        if do_eval:
            val = validation_loss(accelerator, ddp_model, val_features, collate, cfg.batch)
            record = record or {"step": step}
            record["val_loss"] = val
            if best_val is None or val < best_val:
                best_val, bad_evals = val, 0
                save_best(model, run_dir / "best", accelerator.is_main_process)
            else:
                bad_evals += 1
            stopped_early = cfg.early_stop_patience > 0 and bad_evals >= cfg.early_stop_patience
        if record is not None and logger is not None:
            logger.log(record)
        if step % cfg.save_steps == 0 or step == total_steps or stopped_early:
            checkpoint(step)
        if stopped_early:
            accelerator.print(f"early stop at step {step}: no validation improvement in "
                              f"{cfg.early_stop_patience} evaluations")
            break
    bar.close()
    save_best(model, run_dir / "final", accelerator.is_main_process)
    if accelerator.is_main_process:
        logger.close()
        plot_losses(run_dir)
    accelerator.wait_for_everyone()
    return LoopResult(steps=step, best_val_loss=best_val, stopped_early=stopped_early)
