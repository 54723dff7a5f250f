"""The training recipe: one object holding a run's options and state, used by train_knowhira.py, the
tests and the benchmark alike, so all three run the same step with the same loss.

    recipe = TrainRecipe.from_values({"model_name": ..., "peft_type": "knowhira", "r_ab": 32, ...})
    recipe.setup()      # data -> validation split -> seed -> model -> method -> tokens -> init pass
    recipe.train()      # run folder, args.json, Trainer(...).run(), train_summary.json

Options come in groups, each a dataclass whose fields are also the command-line flags:
ModelOptions (models/get_models.py), the method's config (models/methods/), DataOptions
(data/options.py), LoopConfig (training/loop.py) and RunOptions (below).
"""
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from data.answer_format import record_task, scored_choices, train_example
from data.options import DataOptions
from data.protocols import answer_slot, get_protocol
from models.get_models import ModelOptions
from models.methods import REGISTRY, get_method, training_hooks
from training.loop import LoopConfig, Trainer
from training.loss import count_targets, task_loss_sum
from training.order import epoch_order
from utils.errors import BadInput
from utils.options import Options, option


def plain_name(v):
    """A folder name inside --output_folder: no path separator, not '.' or '..'."""
    if v is None or ("/" not in v and "\\" not in v and v not in ("", ".", "..")):
        return None
    return f"must be a folder name, not a path (got {v!r}); --output_folder says where"


@dataclass
class RunOptions(Options):
    output_folder: str = option("runs", "folder that holds the run folders")
    run_name: str | None = option(None, "run folder name (default: method, model, lr, seed, time, pid); a name, "
                                  "not a path", check=plain_name)
    resume: str | None = option(None, "continue the run in RUN_DIR from its latest checkpoint "
                                "(its args.json is used)")
    allow_data_change: bool = option(False, "with --resume: continue although the training records changed since "
                                     "the checkpoint was saved (otherwise refused; the run's new checkpoints "
                                     "record the new data)")


@dataclass
class MethodChoice(Options):
    peft_type: str = option("knowhira", "the fine-tuning method (docs/methods.md)")


TRAIN_GROUPS = {"model": ModelOptions, "method": MethodChoice, "data": DataOptions,
                "optimisation": LoopConfig, "run": RunOptions}
# options that may change when a run is resumed; every other one must equal the checkpoint's
# (torch_compile changes the speed, not the model: the compiled sums agree with eager's to 1e-5)
RESUME_SAFE = ("max_steps", "eval_steps", "save_steps", "log_steps", "early_stop_patience",
               "keep_checkpoints", "cache_dir", "validate_at_start", "report_to",
               "torch_compile", "allow_data_change")
RUN_PLACE = ("output_folder", "run_name", "resume")
# what args.json records besides the options (a run's args.json is also a --config file: these are skipped)
RECORDED = ("trainable_params", "n_train", "n_val", "data_records", "data_sha256")


def args_json_keys() -> set[str]:
    """Every key a run's args.json may hold: the options of every group and method, and the counts."""
    return ({f.name for cls in TRAIN_GROUPS.values() for f in cls.option_fields()}
            | {f.name for m in REGISTRY.values() for f in m.config_cls.option_fields()} | set(RECORDED))


def default_run_name(values: dict) -> str:
    """Collision-free: two runs started in the same second differ by process id."""
    model = Path(values["model_name"]).name.replace(".gguf", "")
    return (f"{values['peft_type']}_{model}_lr{values['lr']}_s{values['seed']}_"
            f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")


class TrainRecipe:
    """A training run: options (set at construction), then state (set by `setup`)."""

    def __init__(self, model: ModelOptions, method_cfg, data: DataOptions, loop: LoopConfig,
                 run: RunOptions, peft_type: str):
        self.model_opts, self.method_cfg, self.data, self.loop, self.run = model, method_cfg, data, loop, run
        self.method = get_method(peft_type)
        self.hooks = training_hooks(self.method)  # regulariser, lr scales, data-dependent init (or none)
        self.protocol = get_protocol(data.protocol)
        if data.train_on_inputs is None:  # the protocol's (recorded in args.json resolved)
            data.train_on_inputs = self.protocol.train_on_inputs
        if type(method_cfg) is not self.method.config_cls:
            raise ValueError(f"{type(method_cfg).__name__} is not the config of {peft_type}")

    @classmethod
    def from_values(cls, values: dict) -> "TrainRecipe":
        """From flat option values (parsed flags or a run's args.json); missing ones take defaults,
        keys of no group are ignored."""
        method = get_method(values.get("peft_type", MethodChoice.peft_type))
        return cls(ModelOptions.from_values(values), method.config_from_saved(values),
                   DataOptions.from_values(values), LoopConfig.from_values(values),
                   RunOptions.from_values(values), method.name)

    def values(self) -> dict:
        """The flat option values of this run (what args.json records)."""
        return {**asdict(self.model_opts), "peft_type": self.method.name, **asdict(self.method_cfg),
                **asdict(self.data), **asdict(self.loop), **asdict(self.run)}

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_folder) / self.run.run_name

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self) -> "TrainRecipe":
        """Everything that can fail on bad input happens here, before the run folder exists."""
        import torch
        from accelerate import Accelerator

        from data.commonsense import DataError, fingerprint, load_train_data, record_place, split_validation, train_files
        from data.features import tokenized
        from models.adapter import count_trainable
        from models.get_models import load_base_model
        from training.trackers import check_report_to

        check_report_to(self.loop.report_to)  # before the model loads: a missing tracker is named at once
        # cpu=True without a GPU so that torchrun on CPU runs DDP (or FSDP2) over gloo
        self.accelerator = Accelerator(mixed_precision=self.loop.mixed_precision,
                                       cpu=not torch.cuda.is_available())
        records = load_train_data(self.data.data_dir, self.data.dataset)
        # the records as loaded (before the split), checked on --resume against the checkpoint's
        self.data_fingerprint = {**fingerprint(records),
                                 "files": [str(f) for f in train_files(self.data.data_dir, self.data.dataset)]}
        train_records, val_records = split_validation(records, self.data.val_size)
        torch.manual_seed(self.loop.seed)
        self.model, self.tokenizer = load_base_model(**asdict(self.model_opts))
        self.model.to(self.accelerator.device)  # so the SVDs below run on the accelerator
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos and self.data.cutoff_len > max_pos:
            raise BadInput(f"--cutoff_len {self.data.cutoff_len} exceeds the {max_pos} positions of "
                           f"{self.model_opts.model_name} (config max_position_embeddings)")

        def example(r):
            try:
                return train_example(self.protocol, self.tokenizer, r, None, self.data.answer_format,
                                     self.data.cutoff_len, self.data.train_on_inputs)
            except BadInput as e:  # e.g. a response longer than --cutoff_len: name file and record
                raise DataError(f"{record_place(self.data.data_dir, self.data.dataset, records, r)}: {e}") from None

        def tokenize(recs, desc):  # the main process first: the other ranks memory-map the file it writes
            options = {k: getattr(self.data, k) for k in ("protocol", "cutoff_len", "train_on_inputs", "answer_format")}
            with self.accelerator.main_process_first():
                return tokenized(recs, self.tokenizer, options, example, self.data.cache_dir, desc,
                                 write=self.accelerator.is_main_process)

        self.train_features = tokenize(train_records, "train")
        self.val_features = tokenize(val_records, "validation")
        self.val_slots = self.val_choices = None
        if self.data.answer_format == "label":
            self.val_slots = [answer_slot(self.protocol, self.tokenizer, r, self.data.cutoff_len) for r in val_records]
        else:
            self.val_choices = [scored_choices(self.protocol, self.tokenizer, r, self.data.answer_format)
                                for r in val_records]
        self.val_tasks = [task_of(r) for r in val_records]  # val_acc/<task>
        # after from_pretrained: σ_norm (KnowHiRA) and the truncation (KaSA) see the pretrained weights
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5: not the user's concern
            warnings.filterwarnings("ignore", r".*is_gradient_checkpointing.* is deprecated", FutureWarning)
            self.model = self.method.build(self.model, self.method_cfg)
        message = self.initialise()
        if message:
            self.accelerator.print(message)
        self.n_trainable = count_trainable(self.model)
        return self

    def initialise(self) -> str | None:
        """The method's data-dependent initialisation (HiRA-SB's gradient pass), on a sample of
        training batches apart from epoch 0's order; the loss is the token mean over all of them."""
        n_batches = self.hooks.init_batches(self.method_cfg)
        if not n_batches:
            return None
        from data.tokenize import Collator

        collate, b, device = Collator(self.tokenizer), self.loop.batch, self.accelerator.device
        order = epoch_order(len(self.train_features), self.loop.seed, epoch=-1)
        batches = [{k: v.to(device) for k, v in collate([self.train_features[i] for i in order[j:j + b]]).items()}
                   for j in range(0, n_batches * b, b)]
        total = count_targets([self.train_features[i] for i in order[:n_batches * b]])  # the batches' labels
        return self.hooks.initialise(self.model, self.method_cfg, batches,
                                      lambda model, batch: task_loss_sum(model, batch)[0] / total)

    def config(self) -> dict:
        """What a checkpoint must have been made with for this run to resume from it."""
        return {k: v for k, v in self.values().items() if k not in RESUME_SAFE + RUN_PLACE}

    def trainer(self) -> Trainer:
        return Trainer(self.accelerator, self.model, self.tokenizer, self.train_features, self.val_features,
                       self.loop, self.run_dir, self.save, self.hooks.regularizer(self.method_cfg),
                       self.val_slots, config=self.config(), val_choices=self.val_choices, val_tasks=self.val_tasks,
                       lr_scales=self.hooks.lr_scales(self.method_cfg), data_fingerprint=self.data_fingerprint,
                       allow_data_change=self.run.allow_data_change)

    def save(self, model, out_dir, write: bool = True) -> None:
        self.method.save(model, self.method_cfg, out_dir, write)

    # ---- train ---------------------------------------------------------------------------------
    def train(self, resuming: bool = False):
        """Train in the run folder: a new run needs an absent or empty folder, `resuming` an existing
        one. The folder is locked for the run's duration; a new run that fails before its first
        checkpoint removes the folder it created."""
        from utils.atomic import atomic_write_json
        from utils.runs import RunLock

        acc = self.accelerator
        trainer = self.trainer()  # checks the batch against the data before the folder exists
        blocking = next((p for p in (self.run_dir, *self.run_dir.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise BadInput(f"{blocking} is a file, not a folder: the run folder {self.run_dir} cannot be made "
                           "there (--output_folder, --run_name)")
        existed = self.run_dir.exists() and any(self.run_dir.iterdir())
        acc.wait_for_everyone()  # every rank has looked before rank 0 makes the folder
        if existed and not resuming:
            raise BadInput(f"run folder {self.run_dir} exists and is not empty: continue it with "
                           f"--resume {self.run_dir}, or pick another --run_name")
        with RunLock(self.run_dir, acc.is_main_process):
            try:
                if resuming:
                    trainer.resume()  # a damaged or mismatched checkpoint: refused before anything is written
                if acc.is_main_process:
                    atomic_write_json(self.run_dir / "args.json",
                                      {**self.values(), "resume": None, "allow_data_change": False,
                                       "trainable_params": self.n_trainable, "n_train": len(self.train_features),
                                       "n_val": len(self.val_features),
                                       "data_records": self.data_fingerprint["records"],
                                       "data_sha256": self.data_fingerprint["sha256"]})
                total = sum(p.numel() for p in self.model.parameters())
                acc.print(f"run dir: {self.run_dir}\ntrainable parameters: {self.n_trainable:,} "
                          f"({100 * self.n_trainable / total:.3f}%)")
                result = trainer.run()
            except BaseException:
                if acc.is_main_process and not existed and not (self.run_dir / "checkpoints" / "latest").exists():
                    RunLock.remove_on_release(self.run_dir)
                raise
        if acc.is_main_process:
            summary = train_summary(self.run_dir, result, acc.device)
            atomic_write_json(self.run_dir / "train_summary.json", summary)
            acc.print(f"done: {result.steps} steps, best {result.best_metric} {result.best_value}, "
                      f"median step {summary['median_step_s']:.2f} s, "
                      f"peak memory {summary['peak_memory_gib']:.2f} GiB ({summary['memory_kind']})")
        return result


def task_of(record: dict) -> str | None:
    """The record's task for the per-task validation accuracy, or None when no task fits it."""
    try:
        return record_task(record, None)
    except BadInput:
        return None


def train_summary(run_dir, result, device) -> dict:
    """Median optimizer-step time (from the log's wall times) and peak memory of this process."""
    import resource
    import statistics

    import torch

    from training.logger import read_log

    records = read_log(run_dir)
    log = [r for r in records if "time" in r]
    val_loss = [r["val_loss"] for r in records if "val_loss" in r]
    val_acc = [r["val_acc"] for r in records if "val_acc" in r]
    per_step = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(log, log[1:])
                if b["step"] > a["step"] and not b.get("resumed")]  # not across a kill and resume
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**30, "CUDA max allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"
    return {"steps": result.steps, "best_val_loss": min(val_loss, default=None),
            "best_val_acc": max(val_acc, default=None), "best_metric": result.best_metric,
            "stopped_early": result.stopped_early,
            "median_step_s": statistics.median(per_step) if per_step else float("nan"),
            "peak_memory_gib": peak, "memory_kind": kind}
