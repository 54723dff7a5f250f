"""KnowHiRA: train a causal LM with Hadamard-family adapters, or evaluate a trained run.

Train:     python train_knowhira.py --model_name weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
               --dataset mix:boolq,ARC-Easy,ARC-Challenge,openbookqa --max_steps 40
Resume:    python train_knowhira.py --resume RUN_DIR
Evaluate:  python train_knowhira.py --ckpt RUN_DIR --dataset all
Zero-shot: python train_knowhira.py --ckpt none --model_name MODEL --dataset boolq

Multi-GPU: the same script under `torchrun --nproc_per_node=N` (accelerate handles DDP).
Every flag comes from an options dataclass (training/recipe.py lists the groups; each method's own
flags from its config in models/methods/). A flag the chosen mode does not use is an error; a
method flag the chosen method does not use is reported and ignored.
"""
import argparse
import sys
from pathlib import Path

from eval.recipe import EvalOptions, EvalRecipe
from models.get_models import ModelOptions
from models.methods import REGISTRY
from training.recipe import TRAIN_GROUPS, TrainRecipe, default_run_name
from utils.options import add_arguments, defaults_of
from utils.runs import run_args

# flags of the training groups that evaluation (--ckpt) also reads; --batch is the evaluation batch
# and --eval_strategy is accepted (the original KnowHiRA evaluation command passes it)
EVAL_SHARED = ("model_name", "gguf_file", "load_bit", "dataset", "data_dir", "seed", "batch",
               "eval_strategy", "output_folder", "protocol")
# flags that may change when a run is resumed (printed; everything else comes from args.json)
RESUME_SAFE = ("max_steps", "eval_steps", "save_steps", "log_steps", "early_stop_patience",
               "keep_checkpoints")


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
            for name, method in REGISTRY.items():
                add_arguments(p.add_argument_group(f"{name}: {method.summary}"), method.config_cls, seen)
    add_arguments(p.add_argument_group("evaluation (--ckpt)"), EvalOptions, seen)
    return p


def _method_flags() -> set[str]:
    return {f.name for m in REGISTRY.values() for f in m.config_cls.option_fields()}


def train_values(given: dict, parser) -> dict:
    """Flat training values: defaults, then the given flags; checks mode and method flags."""
    eval_only = {f.name for f in EvalOptions.option_fields()} - {"ckpt"}
    wrong = sorted(eval_only & given.keys())
    if wrong:
        parser.error(f"--{wrong[0]} is an evaluation flag (used with --ckpt), not a training one")
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


def resume_values(given: dict, parser) -> dict:
    """The run's saved values, with the flags that may change safely applied (and printed)."""
    run_dir = Path(given["resume"])
    args_file = run_dir / "args.json"
    saved = run_args(run_dir, "--resume")
    others = sorted(set(given) - {"resume", *RESUME_SAFE})
    if others:
        parser.error(f"--resume takes its configuration from {args_file}; {', '.join('--' + o for o in others)} "
                     f"cannot change in a resumed run (allowed: {', '.join('--' + s for s in RESUME_SAFE)})")
    for k in RESUME_SAFE:
        if k in given and given[k] != saved.get(k):
            print(f"note: resuming with --{k} {given[k]} (the run had {saved.get(k)})", file=sys.stderr)
    defaults = train_values({"peft_type": saved.get("peft_type", "knowhira")}, parser)
    return {**defaults, **saved, **{k: given[k] for k in RESUME_SAFE if k in given},
            "output_folder": str(run_dir.parent), "run_name": run_dir.name, "resume": None}


def eval_recipe(given: dict, parser) -> EvalRecipe:
    allowed = {f.name for f in EvalOptions.option_fields()} | set(EVAL_SHARED)
    wrong = sorted(set(given) - allowed)
    if wrong:
        parser.error(f"--{wrong[0]} is a training flag; evaluation (--ckpt) does not use it")
    if given["ckpt"] != "none" and {"model_name", "gguf_file", "load_bit"} & given.keys():
        parser.error("--model_name/--gguf_file/--load_bit come from the run's args.json with --ckpt RUN_DIR; "
                     "they are for --ckpt none (zero-shot)")
    values = {**defaults_of(EvalOptions), **{k: v for k, v in given.items() if k in defaults_of(EvalOptions)}}
    if "batch" in given and "eval_batch" not in given:
        values["eval_batch"] = given["batch"]
    shared = {k: v for cls in TRAIN_GROUPS.values() for k, v in defaults_of(cls).items() if k in EVAL_SHARED}
    shared.update({k: v for k, v in given.items() if k in EVAL_SHARED})
    return EvalRecipe(EvalOptions(**values), tasks=shared["dataset"], data_dir=shared["data_dir"],
                      seed=shared["seed"], base=ModelOptions.from_values(shared),
                      output_folder=shared["output_folder"], protocol=given.get("protocol"))


def main(argv=None) -> int:
    from training.loop import NonFiniteLoss

    parser = build_parser()
    given = vars(parser.parse_args(argv))
    if "ckpt" in given and "resume" in given:
        parser.error("--ckpt (evaluate) and --resume (train) exclude each other")
    try:
        if "ckpt" in given:
            eval_recipe(given, parser).setup().run()
            return 0
        values = resume_values(given, parser) if "resume" in given else train_values(given, parser)
        if values["run_name"] is None:
            values["run_name"] = default_run_name(values)
        TrainRecipe.from_values(values).setup().train()
        return 0
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, non-zero exit
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
