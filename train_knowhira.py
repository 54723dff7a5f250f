"""KnowHiRA: train a causal LM with Hadamard-family adapters, or evaluate a trained run.

Train:     python train_knowhira.py --model_name weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
               --dataset mix:boolq,ARC-Easy,ARC-Challenge,openbookqa --max_steps 40
Resume:    python train_knowhira.py --resume RUN_DIR
Evaluate:  python train_knowhira.py --ckpt RUN_DIR --dataset all
Zero-shot: python train_knowhira.py --ckpt none --model_name MODEL --dataset boolq

Multi-GPU: the same script under `torchrun --nproc_per_node=N` (accelerate handles DDP).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from models.methods import METHODS

DEFAULT_MODEL = "weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # scripts/fetch_smollm2.sh
DEFAULT_DATA_DIR = os.environ.get("KNOWHIRA_DATA_DIR", "data/commonsense")


# ---- arguments ---------------------------------------------------------------------------------
def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unit_interval(low_open: bool):
    def parse(text):
        value = float(text)
        ok = (0 < value <= 1) if low_open else (0 <= value <= 1)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be in {'(0, 1]' if low_open else '[0, 1]'}, got {text}")
        return value
    return parse


def target_list(text):
    """'q_proj,v_proj' -> list of suffixes; 'all-linear'; 're:<regex>' -> regex string."""
    if text == "all-linear":
        return text
    if text.startswith("re:"):
        return text[3:]
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty target list")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model_name", default=DEFAULT_MODEL,
                   help="hub name, local folder, or path to a .gguf file")
    g.add_argument("--gguf_file", default=None, help="GGUF file name inside --model_name's folder")
    g.add_argument("--load_bit", type=int, choices=[32, 16], default=32,
                   help="32: fp32 base; 16: bf16 base where supported, else fp16")
    g.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no",
                   help="autocast compute dtype (accelerate)")
    g.add_argument("--enable_grad_ckpt", action="store_true", help="gradient checkpointing")
    g.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer state over the processes "
                        "(torch FSDP2 full-shard, one unit per decoder block; GPU and CPU/gloo); "
                        "for 7B-13B models under torchrun, see README 'Scaling out'")
    g = p.add_argument_group("adapter")
    g.add_argument("--peft_type", choices=METHODS, default="knowhira",
                   help="knowhira | hira | hira_sb | kasa (this repo) | lora | dora | ia3 (peft) | fft")
    g.add_argument("--r_ab", type=positive_int, default=32,
                   help="rank r (B out x r, A r x in; LoRA/DoRA/KaSA rank; HiRA-SB's R is r x r)")
    g.add_argument("--target_modules", type=target_list, default=None,
                   help="comma list of module-name suffixes, 'all-linear', or 're:<regex>' "
                        "(default: per architecture, see models/get_models.py)")
    g.add_argument("--knowledge_alpha", type=unit_interval(False), default=0.5,
                   help="α in M = (1-α) I + α G_Σ (0 = plain HiRA)")
    g.add_argument("--adaptive_gating", action=argparse.BooleanOptionalAction, default=True,
                   help="learnable gate: G_Σ = diag(σ_norm ⊙ sigmoid(g)) (else diag(σ_norm))")
    g.add_argument("--g_init", type=float, default=-1.0, help="initial gate logit (< 0)")
    g.add_argument("--svd_rank_ratio", type=unit_interval(True), default=0.5,
                   help="share of the spectrum σ_norm spans: k = max(r, round(ratio·min(out,in)))")
    g.add_argument("--init_ab", choices=["spectrum", "kaiming"], default="spectrum",
                   help="A init: Kaiming scaled row-wise by f(σ_norm), or plain Kaiming (B = 0)")
    g.add_argument("--spectrum_init_scale", type=non_negative_float, default=1.0,
                   help="τ in f_i ∝ σ_norm_i^τ for the spectrum-aware init")
    g.add_argument("--ortho_lambda", type=non_negative_float, default=1e-3,
                   help="λ in L = L_task + λ · mean_layers L_ortho")
    g.add_argument("--hira_scale", type=float, default=1.0, help="s in W = W0 + s·W0⊙(BMA)")
    g.add_argument("--adapter_dropout", "--lora_dropout", dest="adapter_dropout", type=float,
                   default=0.0, help="dropout on the adapter path's input (all adapter methods)")
    g.add_argument("--lora_alpha", type=float, default=16.0,
                   help="α of LoRA/DoRA (scale α/r) and KaSA (ΔW = (α/r) ΔU diag(Δσ) ΔVᵀ)")
    g.add_argument("--kasa_beta", type=non_negative_float, default=1e-4, help="KaSA: β · Σ Δσ²")
    g.add_argument("--kasa_gamma", type=non_negative_float, default=1e-3,
                   help="KaSA: γ · (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F)")
    g.add_argument("--sb_init_batches", type=positive_int, default=8,
                   help="HiRA-SB: training batches whose full fine-tuning gradient sets B, A, R")
    g.add_argument("--sb_eta", type=non_negative_float, default=1e-3,
                   help="HiRA-SB: step size η of the full fine-tuning step that R matches")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="common_170k",
                   help="training: common_170k | mix:task1,task2,... | task; "
                        "evaluation (--ckpt): task name, alias, comma list, or all")
    g.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="folder with <task>/{train,test}.json (env KNOWHIRA_DATA_DIR)")
    g.add_argument("--cutoff_len", type=positive_int, default=256)
    g.add_argument("--train_on_inputs", action="store_true", help="also put loss on the prompt")
    g.add_argument("--val_size", type=int, default=120, help="held-out validation examples (seed 42)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch", type=positive_int, default=4, help="per-device micro-batch")
    g.add_argument("--grad_acc", type=positive_int, default=1)
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--lr_scheduler", choices=["cosine", "linear"], default="cosine")
    g.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    g.add_argument("--weight_decay", type=non_negative_float, default=0.0)
    g.add_argument("--max_grad_norm", type=non_negative_float, default=1.0, help="0 = no clipping")
    g.add_argument("--epoch", type=positive_int, default=1)
    g.add_argument("--max_steps", type=int, default=-1, help="> 0 overrides --epoch")
    g.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("validation, logging, checkpoints")
    g.add_argument("--eval_strategy", choices=["steps", "epoch", "no"], default="steps")
    g.add_argument("--eval_steps", type=positive_int, default=50)
    g.add_argument("--early_stop_patience", type=int, default=0, help="0 = off")
    g.add_argument("--log_steps", type=positive_int, default=1)
    g.add_argument("--save_steps", type=positive_int, default=50)
    g.add_argument("--keep_checkpoints", type=positive_int, default=2)
    g.add_argument("--output_folder", default="runs")
    g.add_argument("--run_name", default=None, help="run folder name (default: from hyperparameters)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a run from its latest checkpoint (its args.json is used)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--ckpt", default=None, metavar="RUN_DIR|none",
                   help="evaluate a trained run (or 'none': the base model zero-shot)")
    g.add_argument("--eval_mode", choices=["generate", "loglik"], default="generate")
    g.add_argument("--eval_batch", type=positive_int, default=16)
    g.add_argument("--max_new_tokens", type=positive_int, default=32)
    g.add_argument("--beam_size", type=positive_int, default=1)
    g.add_argument("--max_examples", type=positive_int, default=None,
                   help="evaluate a fixed seeded subset of N test examples per task")
    g.add_argument("--results_dir", default=None,
                   help="where evaluation writes (default: the run dir, or runs/zeroshot_<model>)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.g_init >= 0:
        parser.error(f"--g_init must be < 0, got {args.g_init}")
    if not 0 <= args.adapter_dropout < 1:
        parser.error(f"--adapter_dropout must be in [0, 1), got {args.adapter_dropout}")
    if args.val_size < 0 or args.early_stop_patience < 0:
        parser.error("--val_size and --early_stop_patience must be >= 0")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.ckpt is not None and args.resume is not None:
        parser.error("--ckpt (evaluate) and --resume (train) exclude each other")
    return args


# ---- training ----------------------------------------------------------------------------------
def run_name(args) -> str:
    model = Path(args.model_name).name.replace(".gguf", "")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (f"{args.peft_type}_{model}_r{args.r_ab}_a{args.knowledge_alpha}_l{args.ortho_lambda}"
            f"_lr{args.lr}_s{args.seed}_{stamp}")


def method_configs(args, model_type: str):
    """(AdapterConfig for our methods, peft config for lora/dora/ia3); None where not used."""
    from models.adapter import PEFT_TYPES, AdapterConfig
    from models.get_models import default_targets
    from models.methods import PEFT_LIBRARY, peft_library_config

    if args.peft_type == "fft":
        return None, None
    targets = args.target_modules or default_targets(model_type)
    if args.peft_type in PEFT_LIBRARY:
        return None, peft_library_config(args.peft_type, args.r_ab, args.lora_alpha,
                                         args.adapter_dropout, targets, model_type)
    assert args.peft_type in PEFT_TYPES
    return AdapterConfig(peft_type=args.peft_type, r=args.r_ab, target_modules=targets,
                         knowledge_alpha=args.knowledge_alpha, adaptive_gating=args.adaptive_gating,
                         g_init=args.g_init, svd_rank_ratio=args.svd_rank_ratio,
                         init_ab=args.init_ab, spectrum_init_scale=args.spectrum_init_scale,
                         scale=args.hira_scale, dropout=args.adapter_dropout,
                         ortho_lambda=args.ortho_lambda, kasa_alpha=args.lora_alpha,
                         kasa_beta=args.kasa_beta, kasa_gamma=args.kasa_gamma).validate(), None


def hira_sb_init(model, tokenizer, features, args, device):
    """Set HiRA-SB's B, A, R from the full fine-tuning gradient of `--sb_init_batches` batches."""
    from data.tokenize import Collator
    from models.hira_sb import hira_sb_initialise
    from training.loop import epoch_order, task_loss_sum

    collate = Collator(tokenizer)
    order = epoch_order(len(features), args.seed, epoch=-1)  # a sample apart from epoch 0's order
    batches = [{k: v.to(device) for k, v in collate([features[i] for i in order[j:j + args.batch]]).items()}
               for j in range(0, args.sb_init_batches * args.batch, args.batch)]
    total = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)

    def loss_fn(m, batch):  # token-mean over all init batches, so G is one full-batch gradient
        return task_loss_sum(m, batch)[0] / total

    return hira_sb_initialise(model, batches, loss_fn, eta=args.sb_eta)


def tokenize_all(tokenizer, records, args, desc):
    from tqdm.auto import tqdm

    from data.tokenize import tokenize_record

    return [tokenize_record(tokenizer, r, args.cutoff_len, args.train_on_inputs)
            for r in tqdm(records, desc=f"tokenize {desc}", leave=False, mininterval=2)]


def train_main(args) -> int:
    import torch
    from accelerate import Accelerator

    from data.commonsense import load_train_data, split_validation
    from models.adapter import count_trainable
    from models.atomic import atomic_write_json
    from models.get_models import load_base_model
    from models.methods import build
    from training.loop import LoopConfig, train

    # cpu=True without a GPU so that torchrun on CPU runs DDP (or FSDP2) over gloo
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    # everything that can fail on bad input happens before the run folder exists
    records = load_train_data(args.data_dir, args.dataset)
    train_records, val_records = split_validation(records, args.val_size, seed=42)
    torch.manual_seed(args.seed)
    model, tokenizer = load_base_model(args.model_name, args.gguf_file, args.load_bit,
                                       args.enable_grad_ckpt)
    model.to(accelerator.device)  # so the SVDs below run on the accelerator
    adapter_cfg, peft_cfg = method_configs(args, model.config.model_type)
    train_features = tokenize_all(tokenizer, train_records, args, "train")
    val_features = tokenize_all(tokenizer, val_records, args, "validation")
    # after from_pretrained: σ_norm (KnowHiRA) and the truncation (KaSA) see the pretrained weights
    model, save, reg = build(model, args.peft_type, adapter_cfg, peft_cfg)
    if args.peft_type == "hira_sb":
        report = hira_sb_init(model, tokenizer, train_features, args, accelerator.device)
        accelerator.print("HiRA-SB init: mean relative residual "
                          f"{sum(r['rel_residual'] for r in report.values()) / len(report):.3f}")
    n_trainable = count_trainable(model)

    run_dir = Path(args.output_folder) / args.run_name
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "args.json", {**vars(args), "trainable_params": n_trainable,
                                                  "n_train": len(train_features),
                                                  "n_val": len(val_features)})
    accelerator.print(f"run dir: {run_dir}\ntrainable parameters: {n_trainable:,} "
                      f"({100 * n_trainable / sum(p.numel() for p in model.parameters()):.3f}%)")
    loop_cfg = LoopConfig(batch=args.batch, grad_acc=args.grad_acc, lr=args.lr,
                          weight_decay=args.weight_decay, warmup=args.warmup,
                          lr_scheduler=args.lr_scheduler, max_grad_norm=args.max_grad_norm,
                          epoch=args.epoch, max_steps=args.max_steps, seed=args.seed,
                          eval_strategy=args.eval_strategy, eval_steps=args.eval_steps,
                          save_steps=args.save_steps, keep_checkpoints=args.keep_checkpoints,
                          early_stop_patience=args.early_stop_patience, log_steps=args.log_steps,
                          reg_weight=reg[1] if reg else 0.0, fsdp=args.fsdp)
    result = train(accelerator, model, tokenizer, train_features, val_features, loop_cfg, run_dir,
                   save_best=save, extra_loss=reg[0] if reg else None)
    if accelerator.is_main_process:
        summary = train_summary(run_dir, result, accelerator.device)
        atomic_write_json(run_dir / "train_summary.json", summary)
        accelerator.print(f"done: {result.steps} steps, best validation loss {result.best_val_loss}, "
                          f"median step {summary['median_step_s']:.2f} s, "
                          f"peak memory {summary['peak_memory_gib']:.2f} GiB ({summary['memory_kind']})")
    return 0


def train_summary(run_dir, result, device) -> dict:
    """Median optimizer-step time (from the log's wall times) and peak memory of this process."""
    import resource
    import statistics

    import torch

    from training.logger import read_log

    times = [r["time"] for r in read_log(run_dir) if "time" in r]
    steps = [r["step"] for r in read_log(run_dir) if "time" in r]
    per_step = [(t1 - t0) / (s1 - s0) for t0, t1, s0, s1 in zip(times, times[1:], steps, steps[1:]) if s1 > s0]
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**30, "CUDA max allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"
    return {"steps": result.steps, "best_val_loss": result.best_val_loss,
            "stopped_early": result.stopped_early,
            "median_step_s": statistics.median(per_step) if per_step else float("nan"),
            "peak_memory_gib": peak, "memory_kind": kind}


# ---- evaluation --------------------------------------------------------------------------------
def eval_tasks(spec: str, data_dir) -> tuple[list[str], list[str]]:
    """(tasks to run, tasks skipped because their test file is missing)."""
    from data.commonsense import task_file
    from data.tasks import TASKS, resolve_task

    if spec == "all":
        present = [t for t in TASKS if task_file(data_dir, t, "test").is_file()]
        return present, [t for t in TASKS if t not in present]
    return [resolve_task(t) for t in spec.split(",") if t.strip()], []


def eval_main(args) -> int:
    import torch
    from accelerate import PartialState

    from eval.evaluate import evaluate_task, load_test_records, update_results_json
    from models.adapter import count_trainable
    from models.get_models import load_base_model
    from models.adapter import PEFT_TYPES, merge_and_unload
    from models.methods import PEFT_LIBRARY, load_trained

    state = PartialState(cpu=not torch.cuda.is_available())
    tasks, missing = eval_tasks(args.dataset, args.data_dir)
    for t in missing:
        state.print(f"skip {t}: no test file {Path(args.data_dir) / t / 'test.json'}")
    if not tasks:
        raise SystemExit(f"error: no test files for {args.dataset!r} in {args.data_dir}")
    if args.ckpt == "none":
        model, tokenizer = load_base_model(args.model_name, args.gguf_file, args.load_bit)
        meta = {"method": "zero-shot", "model_name": args.model_name, "trainable_params": 0}
        out_dir = Path(args.results_dir or Path(args.output_folder) / f"zeroshot_{Path(args.model_name).name}")
    else:
        run_dir = Path(args.ckpt)
        saved = json.loads((run_dir / "args.json").read_text())
        adapter_dir = run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "final"
        if not adapter_dir.is_dir():
            raise SystemExit(f"error: {run_dir} has no trained adapter (best/ or final/)")
        model, tokenizer = load_base_model(saved["model_name"], saved.get("gguf_file"), saved["load_bit"])
        model = load_trained(model, saved["peft_type"], adapter_dir)
        # evaluate the merged weights: W0 + ΔW costs a plain forward per generated token (the
        # unmerged Hadamard layer rebuilds W0 ⊙ (1 + s·BMA) on every call)
        if saved["peft_type"] in PEFT_TYPES:
            merge_and_unload(model)
        elif saved["peft_type"] in PEFT_LIBRARY:
            model = model.merge_and_unload()
        meta = {"method": saved["peft_type"], "model_name": saved["model_name"],
                "adapter": adapter_dir.name,
                # counted at training time: peft loads lora/dora/ia3 frozen (count 0 here)
                "trainable_params": saved.get("trainable_params", count_trainable(model)),
                **{k: saved.get(k) for k in ("r_ab", "lr", "knowledge_alpha", "ortho_lambda",
                                             "svd_rank_ratio", "max_steps", "dataset", "seed")}}
        out_dir = Path(args.results_dir or run_dir)
    model.to(state.device).eval()
    meta.update(eval_mode=args.eval_mode, max_examples=args.max_examples)
    for task in tasks:
        records = load_test_records(args.data_dir, task)
        result = evaluate_task(model, tokenizer, records, task, out_dir, mode=args.eval_mode,
                               batch_size=args.eval_batch, max_new_tokens=args.max_new_tokens,
                               beam_size=args.beam_size, max_examples=args.max_examples,
                               seed=args.seed, rank=state.process_index,
                               world_size=state.num_processes)
        if state.is_main_process:
            update_results_json(out_dir, result, meta)
            lo, hi = result["ci95_low"], result["ci95_high"]
            print(f"{task:14s} acc {100 * result['accuracy']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
                  f"n={result['n']} parse-fail {100 * result['parse_failure_rate']:.1f}% "
                  f"chance {100 * result['chance_accuracy']:.1f}% "
                  f"majority {100 * result['majority_accuracy']:.1f}% "
                  f"({result['examples_per_s']:.1f} ex/s)")
    return 0


def main(argv=None) -> int:
    from training.loop import NonFiniteLoss

    args = parse_args(argv)
    if args.resume:
        if not (Path(args.resume) / "args.json").is_file():
            print(f"error: --resume {args.resume}: no args.json there (not a run folder)", file=sys.stderr)
            return 2
        resume_dir = Path(args.resume)  # args is replaced below: saved["resume"] is None
        saved = json.loads((resume_dir / "args.json").read_text())
        # parser defaults, overlaid with the run's saved values (older runs may lack newer flags)
        args = argparse.Namespace(**{**vars(args), **{k: v for k, v in saved.items() if k in vars(args)}})
        args.output_folder, args.run_name = str(resume_dir.parent), resume_dir.name
        args.resume = None
    elif args.ckpt is None and args.run_name is None:
        args.run_name = run_name(args)
    try:
        return eval_main(args) if args.ckpt is not None else train_main(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, non-zero exit
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
