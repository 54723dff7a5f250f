"""The training loop: explicit, resumable, and identical on one process and under torchrun.

Objective per optimizer step:
    L = L_task + λ · L_reg      (KnowHiRA/HiRA: L_reg = L_ortho, λ = λ_ortho; KaSA: its β/γ terms, λ = 1)
    L_task  = Σ (token cross-entropy over response tokens of the effective batch) / N_tokens
    L_ortho = mean over adapted layers of ||A Aᵀ - I||_F² + ||Bᵀ B - I||_F²
The task loss is normalised by the number of target tokens of the WHOLE effective batch
(all micro-batches, all ranks), so 2 processes x batch b and 1 process x batch 2b give the same
gradient. Every rank can count those tokens itself because the data order is a pure function of
(seed, epoch): no communication is needed for it.

The data order (training/order.py), the loss and the output head (training/loss.py) and validation
(training/validation.py) live beside this file; the Trainer below puts them together.
"""
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from data.tokenize import Collator
from models.output_head import OutputHead
from training.checkpoint import complete, discard_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from training.logger import RunLogger, plot_losses
from training.loss import count_targets, task_loss_sum
from training.order import epoch_order
from training.trackers import check_report_to, parse_report_to, report_to_problem
from training.validation import validate
from utils.dist import full, shard_model
from utils.errors import BadInput
from utils.options import Options, non_negative, option, positive


def seed_range(v):
    """torch's generators take seeds in [-2**63, 2**64)."""
    return None if -2**63 <= v < 2**64 else f"must fit in 64 bits (a torch seed), got {v}"


@dataclass
class LoopConfig(Options):
    """Optimisation, validation, logging and checkpoint options (flags generated from the fields)."""

    batch: int = option(4, "per-device micro-batch (evaluation mode: the evaluation batch)", check=positive)
    grad_acc: int = option(1, "gradient accumulation steps", check=positive)
    lr: float = option(2e-4, "peak learning rate (AdamW)", check=positive)
    lr_scheduler: str = option("cosine", "decay to 0 after the warmup", choices=("cosine", "linear"))
    warmup: int = option(0, "linear warmup steps", check=non_negative)
    weight_decay: float = option(0.0, "AdamW weight decay", check=non_negative)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = no clipping)", check=non_negative)
    epoch: float = option(1.0, "training epochs, fractions allowed (0.5, 3.0); --max_steps > 0 overrides",
                          check=positive)
    max_steps: int = option(-1, "optimizer steps; > 0 overrides --epoch")
    seed: int = option(42, "random seed (training: init and data order; evaluation: the --max_examples subset)",
                       check=seed_range)
    eval_strategy: str = option("steps", "when to compute the validation loss", choices=("steps", "epoch", "no"))
    eval_steps: int = option(50, "validate every N steps (--eval_strategy steps)", check=positive)
    early_stop_patience: int = option(0, "validations without improvement before stopping (0 = off)",
                                      check=non_negative)
    group_by_length: bool = option(True, "batches of records of similar length (less padding); the order "
                                   "stays a function of (seed, epoch)")
    validate_at_start: bool = option(False, "also validate before the first step (logged as step 0: the "
                                     "untrained model's numbers; not a candidate for best/)")
    best_metric: str = option("val_loss", "the validation number that picks best/ (and early stopping): "
                              "lowest val_loss, or highest val_acc", choices=("val_loss", "val_acc"))
    log_steps: int = option(1, "log every N steps", check=positive)
    report_to: list[str] = option(["tensorboard"], "experiment trackers that also get log.jsonl's scalars and "
                                  "the run's config: a comma list of tensorboard, wandb, mlflow, trackio, or none "
                                  "(log.jsonl only); docs/usage.md says what each needs",
                                  parse=parse_report_to, check=report_to_problem)
    save_steps: int = option(50, "checkpoint every N steps", check=positive)
    keep_checkpoints: int = option(2, "checkpoints kept", check=positive)
    mixed_precision: str = option("no", "autocast compute dtype (accelerate)", choices=("no", "bf16", "fp16"))
    torch_compile: bool = option(False, "torch.compile each decoder block, adapters included, forward and "
                                 "backward (dynamic shapes: one graph for every padded length; models/compile.py); "
                                 "training, validation and scoring evaluation; off by default (docs/speed.md: "
                                 "compile time and step time measured)")
    fsdp: bool = option(False, "shard parameters, gradients and optimizer state over the processes (torch "
                        "FSDP2 full-shard, one unit per decoder block; GPU and CPU/gloo); for 7B-13B "
                        "models under torchrun, see docs/scaling.md")


@dataclass
class LoopResult:
    steps: int
    best_metric: str  # val_loss or val_acc
    best_value: float | None  # its best value (lowest loss, highest accuracy); None: never validated
    stopped_early: bool = False


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """Ctrl-C (SIGINT): the run stopped after a completed step and a checkpoint."""


class StopFlag:
    """SIGINT sets a flag the loop reads after each completed step (the step finishes, a checkpoint
    is written, then the run stops); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        import signal

        self.set = True
        signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def all_finite(params) -> bool:
    """Every element of every (local shard of a) parameter is finite."""
    from torch.distributed.tensor import DTensor

    return all(bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()) for p in params)


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


def param_groups(model, lr: float, scales: dict[str, float]) -> list[dict]:
    """The trainable parameters as optimizer groups: those whose name ends with a key of `scales`
    at lr x its value, the rest at lr (one group when `scales` is empty)."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in scales.items() if name == k or name.endswith("." + k)), 1.0)
            groups.setdefault(scale, []).append(p)
    # the group at lr first: the logged rate is the first group's
    return [{"params": ps, "lr": lr * scale} for scale, ps in sorted(groups.items(), key=lambda g: g[0] != 1.0)]


class Trainer:
    """One training run: optimizer, schedule, resume, the step, validation, checkpoints.

    `save(unwrapped_model, folder, write)` writes the method's trained state (called on every rank:
    under FSDP2 the gather is collective; only rank 0 writes); `regularizer` is the method's
    models.methods.Regularizer (fn(unwrapped_model), weight) or None; `lr_scales` {parameter-name
    suffix: multiplier of cfg.lr} puts those parameters in their own optimizer group.
    """

    def __init__(self, accelerator, model, tokenizer, train_features: list[dict], val_features: list[dict],
                 cfg: LoopConfig, run_dir, save, regularizer=None, val_slots=None, config=None, val_choices=None,
                 lr_scales=None, val_tasks=None, data_fingerprint=None, allow_data_change=False):
        self.acc, self.model, self.cfg, self.run_dir = accelerator, model, cfg, Path(run_dir)
        self.train_features, self.val_features, self.save = train_features, val_features, save
        self.val_slots, self.config = val_slots, config  # config: saved with checkpoints, checked on resume
        self.val_choices = val_choices  # text and cloze answer formats: what val_acc scores (validate)
        self.val_tasks = val_tasks  # each validation record's task (val_acc/<task>), or None
        # {"records", "sha256", "files"} of the training records (data/commonsense.py fingerprint): saved with
        # checkpoints, compared on resume unless allow_data_change
        self.data_fingerprint, self.allow_data_change = data_fingerprint, allow_data_change
        self.reg_fn, self.reg_weight = regularizer if regularizer is not None else (None, 0.0)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.global_batch = cfg.batch * cfg.grad_acc * self.world
        self.steps_per_epoch = len(train_features) // self.global_batch
        if self.steps_per_epoch == 0:
            raise BadInput(f"{len(train_features)} training examples are fewer than one effective "
                           f"batch ({cfg.batch} x {cfg.grad_acc} x {self.world} = {self.global_batch})")
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epoch * self.steps_per_epoch)
        accelerator.print(f"effective batch = {cfg.batch} (per device) x {cfg.grad_acc} (grad_acc) x "
                          f"{self.world} (processes) = {self.global_batch}; {self.steps_per_epoch} "
                          f"steps/epoch; {self.total_steps} optimizer steps")
        if cfg.torch_compile:  # before sharding and DDP, as torchtune does: they wrap the compiled blocks
            from models.compile import compile_blocks

            n = compile_blocks(model, accelerator.device)
            accelerator.print(f"torch.compile: {n} decoder blocks (compiled at the first steps)")
        if cfg.fsdp:  # torch FSDP2 directly: accelerate's FSDP plugin does not run on CPU/gloo
            self.wrapped = shard_model(model)
            accelerator.print(f"FSDP2 full-shard over {self.world} processes: each holds 1/{self.world} "
                              "of every parameter, gradient and optimizer state")
        self.params = [p for p in model.parameters() if p.requires_grad]  # after sharding: DTensors
        self.head = OutputHead.of(model)  # None: the loss runs the head at every position
        optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, lr_scales or {}), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, self.total_steps))
        if cfg.fsdp:
            self.optimizer = accelerator.prepare(optimizer)
        else:
            self.wrapped, self.optimizer = accelerator.prepare(model, optimizer)
        check_report_to(cfg.report_to)  # a tracker not installed or configured: BadInput before the run folder
        self.collate = Collator(tokenizer)
        self.step, self.best_val, self.bad_evals = 0, None, 0
        self.written, self.resumed = set(), False  # checkpoint steps this process wrote; resume() done
        self.start_step = 0  # the step this process started from (resumed runs: > 0)
        self._order = (None, [])  # (epoch, its example order)

    def resume(self) -> None:
        """Continue from the newest complete checkpoint of the run folder, if there is one (once;
        TrainRecipe.train calls it before writing anything, so a damaged checkpoint changes nothing)."""
        if self.resumed:
            return
        self.resumed = True
        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler, self.config)
            if state["step"] > self.total_steps:  # nothing to train, and args.json would record fewer steps
                raise BadInput(f"the run's newest checkpoint {ckpt} is at step {state['step']}, beyond the "
                               f"{self.total_steps} steps asked for (--max_steps/--epoch): resume with more steps")
            self.check_data(ckpt, state.get("data"))
            self.step, self.best_val = state["step"], state.get("best_val")
            self.bad_evals = state.get("bad_evals", 0)
            self.start_step = self.step
            self.acc.print(f"resumed from {ckpt} at step {self.step}")
        elif (self.run_dir / "log.jsonl").exists():
            self.acc.print(f"note: no checkpoint in {self.run_dir / 'checkpoints'}: training from step 0")

    def check_data(self, ckpt, saved) -> None:
        """The checkpoint's training-data fingerprint against this process's records: a change is refused
        (BadInput) unless allow_data_change; a checkpoint written before fingerprints were recorded is noted."""
        now = self.data_fingerprint
        if now is None:
            return
        if saved is None:
            self.acc.print(f"note: {ckpt} records no training-data fingerprint (written by an earlier version); "
                           "the training records are not compared")
            return
        if not (isinstance(saved, dict) and isinstance(saved.get("sha256"), str)
                and isinstance(saved.get("records"), int)):
            raise BadInput(f"{ckpt / 'state.pt'}: its training-data fingerprint is not {{records, sha256}} "
                           f"(got {saved!r:.80}); damaged?")
        if saved["sha256"] == now["sha256"] and saved["records"] == now["records"]:
            return
        counts = (f"{saved['records']} records when saved, {now['records']} now" if saved["records"] != now["records"]
                  else f"{now['records']} records then and now, their contents differ")
        what = f"the training data ({', '.join(now['files'])}) changed since {ckpt} was saved: {counts}"
        if not self.allow_data_change:
            raise BadInput(f"--resume {self.run_dir}: {what}; restore the data, or continue on the new records "
                           "with --allow_data_change")
        self.acc.print(f"note: {what}; continuing on the new records (--allow_data_change)")

    def train_step(self) -> dict:
        """One optimizer step (all micro-batches of one global batch); returns its numbers."""
        acc, cfg, world = self.acc, self.cfg, self.world
        epoch, k = divmod(self.step, self.steps_per_epoch)
        order = self.order(epoch)
        chunk = [self.train_features[i] for i in order[k * self.global_batch:(k + 1) * self.global_batch]]
        n_targets = count_targets(chunk)  # over ALL ranks and micro-batches of this step
        loss_task = torch.zeros((), device=acc.device, dtype=torch.float64)
        reg_value, tokens, slots = 0.0, 0, 0
        for j in range(cfg.grad_acc):
            lo = (j * world + self.rank) * cfg.batch
            micro = chunk[lo:lo + cfg.batch]
            b = {key: v.to(acc.device) for key, v in self.collate(micro).items()}
            tokens += int(b["attention_mask"].sum()) * world
            slots += b["attention_mask"].numel() * world
            last = j == cfg.grad_acc - 1
            with acc.no_sync(self.wrapped) if not last else nullcontext():
                with acc.autocast():
                    loss_sum, _ = task_loss_sum(self.wrapped, b, self.head)
                # DDP averages gradients over ranks, hence the factor `world`
                loss = loss_sum * world / n_targets
                if self.reg_fn is not None:  # + λ·L_reg, spread over the micro-steps; outside autocast, so
                    reg = self.reg_fn(self.model)  # the r x r Gram matrices of the fp32 factors stay fp32
                    loss = loss + self.reg_weight * reg / cfg.grad_acc
                    reg_value = reg.item()
                acc.backward(loss)
            loss_task += loss_sum.detach().double()
        loss_task = acc.reduce(loss_task, "sum") / n_targets
        if not torch.isfinite(loss_task):
            raise self.non_finite(f"non-finite task loss {loss_task.item()} at step {self.step + 1}")
        grad_norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0
                                        else float("inf"))
        if not torch.isfinite(full(grad_norm)):
            raise self.non_finite(f"non-finite gradient norm at step {self.step + 1}")
        lr_now = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if not self.agree(all_finite(self.params)):  # e.g. a step size so large the weights overflow
            raise self.non_finite(f"non-finite trainable weights after optimizer step {self.step + 1} "
                                  f"(--lr {cfg.lr} too large?)")
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"epoch": epoch + (k + 1) / self.steps_per_epoch, "loss_task": loss_task.item(),
                "loss_reg": reg_value, "lr": lr_now, "grad_norm": grad_norm, "tokens": tokens,
                "pad_frac": 1 - tokens / slots}  # (this rank's padding, x world: an estimate under DDP)

    def order(self, epoch: int) -> list[int]:
        """epoch_order of this run's training examples (computed once per epoch)."""
        if self._order[0] != epoch:
            lengths = [len(f["input_ids"]) for f in self.train_features] if self.cfg.group_by_length else None
            self._order = epoch, epoch_order(len(self.train_features), self.cfg.seed, epoch, lengths,
                                             self.global_batch)
        return self._order[1]

    def agree(self, ok: bool) -> bool:
        """True only if `ok` on every rank (one tiny all-reduce when distributed)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.acc.device)
        return float(self.acc.reduce(flag, "sum")) == 0.0

    def non_finite(self, what: str) -> NonFiniteLoss:
        """The error for a non-finite step self.step + 1. A checkpoint this process wrote at step
        self.step is removed first: --resume from it would repeat this very step (data order and RNG
        are restored exactly) and stop again at once. It is kept when it is the only checkpoint
        left and this process resumed the run (then it is the run's only state)."""
        root, name = self.run_dir / "checkpoints", f"step_{self.step:06d}"
        if self.step not in self.written or not complete(root / name):
            return NonFiniteLoss(f"{what}; {self.last_good()}")
        why = f"step {self.step + 1} is not finite from it"
        steps = {int(p.name[len("step_"):]) for p in root.glob("step_*") if p.suffix != ".tmp" and complete(p)}
        if steps == {self.step} and self.start_step > 0:  # a resumed run's only state: keep it
            return NonFiniteLoss(f"{what}; {name} cannot be continued from ({why}); no other checkpoint is left")
        if self.acc.is_main_process:
            discard_checkpoint(root, self.step)
        self.acc.wait_for_everyone()
        return NonFiniteLoss(f"{what}; {name} was removed ({why}); {self.last_good(removed=True)}")

    def last_good(self, removed: bool = False) -> str:
        """What is left to resume from, for the error message."""
        ckpt = latest_checkpoint(self.run_dir / "checkpoints", log=lambda *_: None)
        return (f"the last good checkpoint is {ckpt} (--resume {self.run_dir} continues from it)"
                if ckpt else f"no {'other ' if removed else ''}checkpoint was written")

    def checkpoint(self) -> None:
        self.written.add(self.step)
        self.acc.wait_for_everyone()
        save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.optimizer, self.scheduler,
                        {"best_val": self.best_val, "bad_evals": self.bad_evals, "config": self.config,
                         "data": None if self.data_fingerprint is None else
                         {k: self.data_fingerprint[k] for k in ("records", "sha256")}},
                        keep=self.cfg.keep_checkpoints, write=self.acc.is_main_process)
        self.acc.wait_for_everyone()

    def run(self) -> LoopResult:
        """Train (resuming if the run folder has a checkpoint) to the end or an early stop."""
        with StopFlag() as stop:
            return self._run(stop)

    def _run(self, stop: StopFlag) -> LoopResult:
        acc, cfg, total = self.acc, self.cfg, self.total_steps
        self.resume()
        logger = RunLogger(self.run_dir, resume_step=self.step, report_to=cfg.report_to) if acc.is_main_process else None
        self.wrapped.train()
        bar = tqdm(total=total, initial=self.step, disable=not acc.is_main_process,
                   desc="train", dynamic_ncols=True)
        if cfg.validate_at_start and self.step == 0 and self.val_features:  # the untrained model's numbers
            numbers = validate(acc, self.wrapped, self.val_features, self.collate, cfg.batch, self.val_slots,
                               self.head, self.val_choices, self.val_tasks)
            if logger is not None:
                logger.log({"step": 0, **numbers})
        stopped_early, t_last, tokens_since = False, time.time(), 0
        resumed_here = self.start_step > 0  # the first record logged after a resume is marked
        try:
            while self.step < total:
                if not self.agree(not stop.set):  # Ctrl-C: the last step is complete; keep it and stop
                    if self.step > 0:
                        self.checkpoint()
                    bar.close()
                    raise Interrupted(f"interrupted at step {self.step}; {self.last_good()}")
                out = self.train_step()
                step = self.step
                tokens_since += out["tokens"]
                bar.update(1)
                record = None
                if step % cfg.log_steps == 0 or step == total:
                    now = time.time()
                    record = {"step": step, "epoch": out["epoch"], "loss_task": out["loss_task"],
                              "loss_reg": out["loss_reg"],
                              "loss_total": out["loss_task"] + self.reg_weight * out["loss_reg"],
                              "lr": out["lr"], "grad_norm": float(full(out["grad_norm"])),
                              "pad_frac": out["pad_frac"],
                              "tokens_per_s": tokens_since / max(now - t_last, 1e-9), "time": now}
                    if resumed_here:  # its time since the previous record includes the pause: not a step time
                        record["resumed"], resumed_here = True, False
                    t_last, tokens_since = now, 0
                    bar.set_postfix(loss=f"{record['loss_task']:.4f}", lr=f"{out['lr']:.2e}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                end_of_epoch = step % self.steps_per_epoch == 0
                do_eval = self.val_features and (
                    (cfg.eval_strategy == "steps" and (step % cfg.eval_steps == 0 or step == total))
                    or (cfg.eval_strategy == "epoch" and (end_of_epoch or step == total)))
                if do_eval:
                    numbers = validate(acc, self.wrapped, self.val_features, self.collate, cfg.batch, self.val_slots,
                                       self.head, self.val_choices, self.val_tasks)
                    record = {**(record or {"step": step}), **numbers}
                    if cfg.best_metric not in numbers:
                        raise BadInput(f"--best_metric {cfg.best_metric}: no validation record has a known "
                                       "answer position (answer words of the records)")
                    # best_val is kept as "lower is better": the loss, or minus the accuracy
                    val = numbers["val_loss"] if cfg.best_metric == "val_loss" else -numbers["val_acc"]
                    if self.best_val is None or val < self.best_val:
                        self.best_val, self.bad_evals = val, 0
                        self.save(self.model, self.run_dir / "best", acc.is_main_process)
                    else:
                        self.bad_evals += 1
                    stopped_early = cfg.early_stop_patience > 0 and self.bad_evals >= cfg.early_stop_patience
                if record is not None and logger is not None:
                    logger.log(record)
                if step % cfg.save_steps == 0 or step == total or stopped_early:
                    self.checkpoint()
                if stopped_early:
                    acc.print(f"early stop at step {step}: no validation improvement in "
                              f"{cfg.early_stop_patience} evaluations")
                    break
        except BaseException:  # the bar's line ends before the error message is printed
            bar.close()
            if logger is not None:
                logger.close(quiet=True)  # the trackers flush now, not into a removed folder
            raise
        bar.close()
        self.save(self.model, self.run_dir / "final", acc.is_main_process)
        if acc.is_main_process:
            logger.close()
            try:
                plot_losses(self.run_dir)
            except Exception as e:  # a figure is not worth a failed run
                print(f"warning: could not write {self.run_dir / 'loss.png'} ({type(e).__name__}: {e})",
                      file=sys.stderr)
        acc.wait_for_everyone()
        best = self.best_val if self.best_val is None or cfg.best_metric == "val_loss" else -self.best_val
        return LoopResult(steps=self.step, best_metric=cfg.best_metric, best_value=best, stopped_early=stopped_early)
