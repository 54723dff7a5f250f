"""(f) Training against the pipeline users would otherwise run, paired step by step so the ratio can rank.

Each pair is our recipe's step (lora, hira, knowhira: training.loop.Trainer.train_step) against an HF
Trainer + peft pipeline in the style of LLM-Adapters' finetune.py (peft LoRA, peft HiRA):
transformers.Trainer, DataCollatorForSeq2Seq(pad_to_multiple_of=8), HF's mean loss, AdamW, linear
schedule, clipping at 1.0; the same model folder, batch, cutoff and rate.

The same batch sequence: our recipe tokenizes the --step_data records once and orders them (its seeded,
length-grouped epoch order); the record indices of its first --peer_warmup + --peer_steps optimizer steps
are that sequence. The HF Trainer gets exactly those tokenized records, in that order, one batch per step
(a sequential sampler over the sequence), and pads them its own way (to a multiple of 8; ours: to the
longest), so both pipelines see the same non-padding tokens at every step (checked).

Interleaved: the HF Trainer runs its own loop (trainer.train()); after each of its optimizer steps a
callback runs our step(s) on the same batch: HF step i, ours step i, HF step i+1, ... (peft HiRA's Trainer
drives knowhira and hira, peft LoRA's drives lora). HF's step i is timed from the end of our step i-1 to
its on_step_end: its whole loop iteration (fetching and collating the batch included, as our step's time
includes its own). The first --peer_warmup steps of each are untimed.

Reported: per pair, the median over timed steps of (their step time / our step time of the same batch),
i.e. our tokens/s over theirs, with a seeded bootstrap 95% interval over the steps (bench.common.paired_ratio);
tokens/s of each pipeline; and the machine's fp32 GEMM FLOP/s (a --gemm_dim square matmul) next to each
pipeline's model FLOP/s (6 * N_matmul * tokens / s: bench.common.FLOP_FORMULA).
"""
import gc
import time

import torch

from scripts.bench.common import FLOP_FORMULA, matmul_params, median, paired_ratio, print_table, sync
from scripts.bench.step import RecipeStep, recipe_values

# their pipeline (peft kind) -> our methods it is paired with, step by step
PAIRS = {"hf-peft-hira": ("hira", ("knowhira", "hira")), "hf-peft-lora": ("lora", ("lora",))}


def gemm_flops(device, dim: int, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of one dim x dim x dim matmul (median of `repeats`)."""
    a, b = torch.randn(dim, dim, device=device), torch.randn(dim, dim, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * dim ** 3 / median(times)


def batch_sequence(step: RecipeStep, n_steps: int) -> list[list[int]]:
    """Record indices (into the recipe's train_features) of our recipe's first `n_steps` optimizer steps:
    the slices Trainer.train_step takes of its epoch order."""
    trainer, out = step.trainer, []
    g = trainer.global_batch
    for s in range(n_steps):
        epoch, k = divmod(s, trainer.steps_per_epoch)
        out.append(trainer.order(epoch)[k * g:(k + 1) * g])
    return out


def peft_model(values: dict, kind: str):
    """The base model of `values` with peft's LoRA or HiRA on its target modules (LLM-Adapters' setup)."""
    from peft import HiraConfig, LoraConfig, get_peft_model

    from models.get_models import load_base_model

    model, tokenizer = load_base_model(values["model_name"])
    targets = values["target_modules"].split(",")
    config = (LoraConfig(r=values["r_ab"], lora_alpha=values["lora_alpha"], target_modules=targets,
                         lora_dropout=0.0, task_type="CAUSAL_LM") if kind == "lora" else
              HiraConfig(r=values["r_ab"], target_modules=targets, task_type="CAUSAL_LM"))
    return get_peft_model(model, config), tokenizer


def run_pair(values: dict, kind: str, ours: dict, n_steps: int, device, out_dir) -> dict:
    """HF Trainer + peft `kind` for `n_steps` steps on the batches our steps `ours` {name: RecipeStep} take,
    each of ours stepping right after HF's step on the same batch. Returns {"times": {pipeline: [s per
    step]}, "tokens": {pipeline: [non-padding tokens per step]}, "trainable": HF's trainable parameters}."""
    import transformers

    from training.loop import LoopConfig

    first = next(iter(ours.values()))
    features = first.trainer.train_features
    sequence = [features[i] for batch in batch_sequence(first, n_steps) for i in batch]
    dataset = [{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]), "labels": f["labels"]}
               for f in sequence]
    model, tokenizer = peft_model(values, kind)
    times = {"theirs": [], **{name: [] for name in ours}}
    tokens = {"theirs": [], **{name: [] for name in ours}}
    clock = {"t": 0.0}

    class Alternate(transformers.TrainerCallback):
        """After HF's step i: its time, then each of our steps on batch i, timed; HF's clock restarts."""

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            times["theirs"].append(time.perf_counter() - clock["t"])
            for name, step in ours.items():
                t0 = time.perf_counter()
                step()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                tokens[name].append(step.tokens[-1])
            clock["t"] = time.perf_counter()

    class Counting(transformers.DataCollatorForSeq2Seq):
        def __call__(self, batch, return_tensors=None):
            out = super().__call__(batch, return_tensors)
            tokens["theirs"].append(int(out["attention_mask"].sum()))
            return out

    args = transformers.TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=values["batch"], gradient_accumulation_steps=1,
        max_steps=n_steps, learning_rate=LoopConfig.from_values(values).lr, warmup_steps=0,
        logging_steps=10 ** 6, save_strategy="no", report_to=[], train_sampling_strategy="sequential",
        seed=42, use_cpu=device.type != "cuda", disable_tqdm=True, dataloader_num_workers=0)
    collate = Counting(tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                                   callbacks=[Alternate()])
    clock["t"] = time.perf_counter()
    trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del trainer, model
    gc.collect()
    return {"times": times, "tokens": tokens, "trainable": trainable}


def bench_training(args, kind: str, model_dir: str, data: dict, out_dir, matmul: int, device) -> dict:
    """Every pair of PAIRS, --peer_warmup + --peer_steps steps, interleaved step by step on the same batches."""
    n_steps, warm = args.peer_warmup + args.peer_steps, args.peer_warmup
    res = {"pairs": {}, "tokens_per_s": {}, "median_step_s": {}, "trainable_params": {},
           "tokens_per_step": {}, "batch": args.step_batch, "timed_steps": args.peer_steps,
           "warmup_steps": warm, "data": {k: v for k, v in data.items() if k != "data_dir"},
           "flop_formula": FLOP_FORMULA}
    for theirs, (peft_kind, mine) in PAIRS.items():
        ours = {m: RecipeStep(recipe_values(args, kind, model_dir, m, data, out_dir)) for m in mine}
        got = run_pair(recipe_values(args, kind, model_dir, peft_kind, data, out_dir), peft_kind, ours,
                       n_steps, device, out_dir / theirs)
        for name, step in ours.items():
            res["trainable_params"][name] = step.n_trainable
        res["trainable_params"][theirs] = got["trainable"]
        del ours
        gc.collect()
        their_tokens = got["tokens"]["theirs"][:n_steps]  # the collator may run one batch ahead
        for name in mine:
            if got["tokens"][name] != their_tokens:  # the pairing rests on this: a bug if it fails
                raise RuntimeError(f"{name} and {theirs} did not see the same tokens per step: "
                                   f"{got['tokens'][name]} vs {their_tokens}")
        res["tokens_per_step"][theirs] = their_tokens[warm:]
        for name, t in got["times"].items():
            label = theirs if name == "theirs" else name
            timed = t[warm:]
            res["median_step_s"][label] = median(timed)
            res["tokens_per_s"][label] = sum(their_tokens[warm:]) / sum(timed)
        for name in mine:  # their time / ours of the same batch = our tokens/s over theirs
            res["pairs"][f"{name} / {theirs}"] = paired_ratio(got["times"]["theirs"][warm:], got["times"][name][warm:])
    res["model_tflops_per_s"] = {k: 6 * matmul * v / 1e12 for k, v in res["tokens_per_s"].items()}
    return res


def bench_peers(args, kind: str, model_dir: str, data: dict, out_dir, device) -> dict:
    """(f) on the model folder `model_dir` (bench.step.prepare_models; `kind` smollm2 or gptneo_shaped)."""
    from models.get_models import load_base_model

    model, _ = load_base_model(model_dir)
    matmul = matmul_params(model)
    del model
    res = {"model": kind, "gemm_fp32_tflops": gemm_flops(device, args.gemm_dim) / 1e12, "gemm_dim": args.gemm_dim}
    tr = res["training"] = bench_training(args, kind, model_dir, data, out_dir, matmul, device)
    print_table(f"(f) training against HF Trainer + peft (LLM-Adapters finetune.py style), {kind}, batch "
                f"{tr['batch']}, the same {tr['timed_steps']} batches each (after {tr['warmup_steps']} untimed), "
                f"step by step; machine fp32 GEMM {res['gemm_fp32_tflops']:.3f} TFLOP/s",
                ["pipeline", "tokens/s", "median s/step", "model TFLOP/s", "share of GEMM", "trainable"],
                [[k, v, tr["median_step_s"][k], tr["model_tflops_per_s"][k],
                  tr["model_tflops_per_s"][k] / res["gemm_fp32_tflops"], tr["trainable_params"][k]]
                 for k, v in tr["tokens_per_s"].items()])
    print_table("(f) ours / theirs: median over the same steps of their step time / ours, bootstrap 95% interval",
                ["pair", "median ratio", "95% interval", "steps"],
                [[k, p["median"], f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]", p["n"]]
                 for k, p in tr["pairs"].items()])
    return res
