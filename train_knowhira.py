"""KnowHiRA: train a causal LM with Hadamard-family adapters, or evaluate a trained run.

Train:     python train_knowhira.py --model_name weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
               --dataset mix:boolq,ARC-Easy,ARC-Challenge,openbookqa --max_steps 40
           python train_knowhira.py --config runs/X/args.json --seed 2 --run_name X_s2   (a file's flags,
               JSON or YAML {flag: value}; flags on the command line override them)
Resume:    python train_knowhira.py --resume RUN_DIR
Evaluate:  python train_knowhira.py --ckpt RUN_DIR --dataset all          (--adapter best|final|step_N)
           python train_knowhira.py --ckpt PEFT_ADAPTER_DIR --model_name ITS_BASE --dataset all
Zero-shot: python train_knowhira.py --ckpt none --model_name MODEL --dataset boolq
Export:    python train_knowhira.py --ckpt RUN_DIR --export peft --export_dir OUT    (or --export merged)

Multi-GPU: the same script under `torchrun --nproc_per_node=N` (accelerate handles DDP).
Every flag comes from an options dataclass (training/recipe.py lists the groups; each method's own
flags from its config in models/methods/). A flag the chosen mode does not use is an error; a
method flag the chosen method does not use is reported and ignored.
"""
import argparse
import sys
from pathlib import Path

from eval.recipe import EvalOptions, EvalRecipe
from models.compat import ORIGINAL_EVAL_FLAGS, resume_targets
from models.export import ExportOptions, checkpoint_kind, export_checkpoint, open_checkpoint
from models.get_models import ModelOptions
from models.methods import REGISTRY
from training.recipe import RECORDED, RESUME_SAFE, TRAIN_GROUPS, TrainRecipe, args_json_keys, default_run_name
from utils.errors import BadInput
from utils.options import add_arguments, defaults_of, read_config
from utils.runs import REQUIRED, RESUME_REQUIRED, run_args

# flags of the training groups that evaluation (--ckpt) also reads; --batch is the evaluation batch
# (and those the original KnowHiRA evaluation command passes are accepted: models/compat.py)
EVAL_SHARED = ("model_name", "gguf_file", "load_bit", "attn_implementation", "dataset", "data_dir", "seed", "batch",
               *ORIGINAL_EVAL_FLAGS, "output_folder", "protocol", "answer_format", "torch_compile")
# the base-model flags: with --ckpt none (zero-shot) or --ckpt PEFT_ADAPTER_DIR; a run has its own
MODEL_FLAGS = ("model_name", "gguf_file", "load_bit", "attn_implementation")


class OneLineErrorParser(argparse.ArgumentParser):
    """A command-line error is one line on stderr and exit status 2 (the usage of ~80 flags would
    bury it; --help prints them)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Every flag, with no defaults filled in: the namespace holds only what was given."""
    p = OneLineErrorParser(prog="train_knowhira.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           argument_default=argparse.SUPPRESS)
    seen = {}
    for title, cls in TRAIN_GROUPS.items():
        add_arguments(p.add_argument_group(title), cls, seen)
        if title == "method":
            for name, impl in REGISTRY.items():
                add_arguments(p.add_argument_group(f"{name}: {impl.summary}"), impl.config_cls, seen)
    add_arguments(p.add_argument_group("evaluation (--ckpt)"), EvalOptions, seen)
    add_arguments(p.add_argument_group("export (--ckpt RUN_DIR --export peft|merged --export_dir OUT)"),
                  ExportOptions, seen)
    p.add_argument("--config", metavar="FILE", help="training flags from a JSON or YAML file {flag: value} (a run's "
                   "args.json is one); flags on the command line override it; args.json records the result")
    p.fields = seen  # flag name -> its dataclass field (read_config checks a file's values with them)
    return p


def _method_flags() -> set[str]:
    return {f.name for m in REGISTRY.values() for f in m.config_cls.option_fields()}


def train_values(given: dict, parser) -> dict:
    """Flat training values: defaults, then the given flags; checks mode and method flags."""
    export = sorted({f.name for f in ExportOptions.option_fields()} & given.keys())
    if export:
        parser.error(f"--{export[0]} is an export flag (used with --ckpt RUN_DIR), not a training one")
    eval_only = {f.name for f in EvalOptions.option_fields()} - {"ckpt"}
    wrong = sorted(eval_only & given.keys())
    if wrong:
        parser.error(f"--{wrong[0]} is an evaluation flag (used with --ckpt), not a training one")
    if given.get("allow_data_change"):
        parser.error("--allow_data_change goes with --resume RUN_DIR (a new run records its training data)")
    values = {k: v for cls in TRAIN_GROUPS.values() for k, v in defaults_of(cls).items()}
    method = REGISTRY.get(given.get("peft_type", values["peft_type"]))
    if method is None:
        parser.error(f"argument --peft_type: must be one of {', '.join(REGISTRY)}, got {given['peft_type']!r}")
    own = {f.name for f in method.config_cls.option_fields()}
    unused = sorted((_method_flags() - own) & given.keys())
    if unused:
        print(f"note: {', '.join('--' + u for u in unused)} not used by {method.name}; ignored",
              file=sys.stderr)
    values.update(defaults_of(method.config_cls))
    values.update({k: v for k, v in given.items() if k not in unused})
    return values


def config_values(path, parser) -> dict:
    """The training flags of a --config file (utils/options.py read_config); the modes' own flags (--ckpt,
    --resume, --export) are not configuration and are refused."""
    values = read_config(path, parser.fields, ignored=RECORDED)
    modes = sorted({"ckpt", "resume", "export", "export_dir"} & values.keys())
    if modes:
        raise BadInput(f"{path}: {modes[0]}: not a training flag (--config holds a new run's configuration)")
    return values


def resume_values(given: dict, parser) -> dict:
    """The run's saved values, with the flags that may change safely applied (and printed). The
    training command itself may be repeated with --resume RUN_DIR added (as HF Trainer's
    resume_from_checkpoint and torchtune's resume_from_checkpoint are used): a flag equal to the saved
    value, and --output_folder/--run_name naming RUN_DIR, are accepted; a flag that differs is refused."""
    run_dir = Path(given["resume"])
    args_file = run_dir / "args.json"
    saved = run_args(run_dir, "--resume", REQUIRED + RESUME_REQUIRED, known=args_json_keys())
    if not (run_dir / "checkpoints").is_dir() and not (run_dir / "log.jsonl").is_file():
        raise BadInput(f"--resume {run_dir}: no checkpoints/ and no log.jsonl there: not a run of this program "
                       "that has started training (start a new run instead)")

    # a list given with --resume for an older run's target_modules null is taken (models/compat.py)
    upgraded = resume_targets(saved, given)
    place = {"output_folder": run_dir.parent, "run_name": run_dir.name, **upgraded}  # the run's, from RUN_DIR

    def changed(k) -> bool:
        if k == "output_folder":
            return Path(given[k]).resolve() != run_dir.parent.resolve()
        return given[k] != place.get(k, saved.get(k))

    others = sorted(k for k in set(given) - {"resume", *RESUME_SAFE} if changed(k))
    if others:
        parser.error(f"--resume takes its configuration from {args_file}; "
                     + ", ".join(f"--{o} {place.get(o, saved.get(o))} → {given[o]}" for o in others)
                     + f" cannot change in a resumed run (allowed: {', '.join('--' + s for s in RESUME_SAFE)})")
    for k in RESUME_SAFE:
        if k in given and given[k] != saved.get(k):
            print(f"note: resuming with --{k} {given[k]} (the run had {saved.get(k)})", file=sys.stderr)
    defaults = train_values({"peft_type": saved.get("peft_type", "knowhira")}, parser)
    values = {**defaults, **saved, **{k: given[k] for k in RESUME_SAFE if k in given},
              "output_folder": str(run_dir.parent), "run_name": run_dir.name, "resume": None, **upgraded}
    check_saved_values(args_file, values)
    return values


def check_saved_values(args_file, values: dict) -> None:
    """An edited args.json (--resume, --ckpt, --export): every value checked (type and range) before anything
    runs, one line naming the file and the key."""
    try:
        TrainRecipe.from_values(values)
    except BadInput as e:
        raise BadInput(f"{args_file}: {e}") from None


def eval_recipe(given: dict, parser) -> EvalRecipe:
    allowed = {f.name for f in EvalOptions.option_fields()} | set(EVAL_SHARED)
    wrong = sorted(set(given) - allowed)
    if wrong:
        parser.error(f"--{wrong[0]} is a training flag; evaluation (--ckpt) does not use it")
    check_model_flags(given, parser)
    values = {**defaults_of(EvalOptions), **{k: v for k, v in given.items() if k in defaults_of(EvalOptions)}}
    if "batch" in given and "eval_batch" not in given:
        values["eval_batch"] = given["batch"]
    shared = {k: v for cls in TRAIN_GROUPS.values() for k, v in defaults_of(cls).items() if k in EVAL_SHARED}
    shared.update({k: v for k, v in given.items() if k in EVAL_SHARED})
    return EvalRecipe(EvalOptions(**values), tasks=shared["dataset"], data_dir=shared["data_dir"],
                      seed=shared["seed"], base=ModelOptions.from_values(shared),
                      output_folder=shared["output_folder"], protocol=given.get("protocol"),
                      answer_format=given.get("answer_format"), torch_compile=shared["torch_compile"])


def check_model_flags(given: dict, parser) -> None:
    """--model_name/--gguf_file/--load_bit: the base of --ckpt none or of a peft adapter folder
    (--model_name required there); a run folder's base comes from its args.json."""
    if given["ckpt"] == "none":
        if "adapter" in given:
            parser.error("--adapter picks a state of a trained run (--ckpt RUN_DIR); --ckpt none is the base model")
        return
    kind = checkpoint_kind(given["ckpt"])  # not a run nor a peft adapter: a one-line error
    if kind == "run":  # a folder whose args.json another program wrote is not read further
        saved = run_args(given["ckpt"], "--ckpt", known=args_json_keys())
        check_saved_values(Path(given["ckpt"]) / "args.json",
                           {**train_values({"peft_type": saved["peft_type"]}, parser), **saved})
    if kind == "peft" and "adapter" in given:
        parser.error(f"--adapter picks a state of a run folder; --ckpt {given['ckpt']} is a peft adapter (one state)")
    if kind == "run" and set(MODEL_FLAGS) & given.keys():
        parser.error("--model_name/--gguf_file/--load_bit come from the run's args.json with --ckpt RUN_DIR; "
                     "they are for --ckpt none (zero-shot) or --ckpt PEFT_ADAPTER_DIR (its base model)")
    if kind == "peft" and "model_name" not in given:
        parser.error(f"--ckpt {given['ckpt']} is a peft adapter: name its base model with --model_name")


def export_run(given: dict, parser) -> str:
    """--ckpt RUN_DIR (or a peft adapter folder) --export peft|merged --export_dir OUT."""
    allowed = {"ckpt", *(f.name for f in ExportOptions.option_fields()), *MODEL_FLAGS}
    wrong = sorted(set(given) - allowed)
    if wrong:
        parser.error(f"--{wrong[0]} is not used by --export (it writes the trained model; it does not "
                     f"train or evaluate)")
    if "export" not in given or "export_dir" not in given:
        parser.error("--export and --export_dir go together")
    if given["ckpt"] == "none":
        parser.error("--export needs a trained run or peft adapter (--ckpt RUN_DIR); --ckpt none has nothing to export")
    check_model_flags(given, parser)
    opts = ExportOptions(export=given["export"], export_dir=given["export_dir"])
    base = ModelOptions.from_values({k: given[k] for k in MODEL_FLAGS if k in given}) \
        if "model_name" in given else None
    return export_checkpoint(open_checkpoint(given["ckpt"], base), opts.export, opts.export_dir)


def main(argv=None) -> int:
    from training.checkpoint import NonFiniteState
    from training.loop import Interrupted, NonFiniteLoss

    parser = build_parser()
    given = vars(parser.parse_args(argv))
    if "ckpt" in given and "resume" in given:
        parser.error("--ckpt (evaluate) and --resume (train) exclude each other")
    if "config" in given and {"ckpt", "resume"} & given.keys():
        parser.error("--config supplies the flags of a new training run; --ckpt and --resume take theirs from the run")
    try:
        if "config" in given:
            given = {**config_values(given.pop("config"), parser), **given}
        if "ckpt" in given and {"export", "export_dir"} & given.keys():
            print(export_run(given, parser))
            return 0
        if "ckpt" in given:
            eval_recipe(given, parser).setup().run()
            return 0
        values = resume_values(given, parser) if "resume" in given else train_values(given, parser)
        if values["run_name"] is None:
            values["run_name"] = default_run_name(values)
        TrainRecipe.from_values(values).setup().train(resuming="resume" in given)
        return 0
    except BadInput as e:  # bad input: one line naming the flag or file, exit 2 (anything else is a bug: traceback)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, NonFiniteState) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        print("stopped: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # e.g. a full disk: the path and the system's reason, on one line
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
