"""(f) Against the pipelines users would otherwise run, on the same machine in one process, interleaved:

training   tokens/s of the recipe's step (lora, hira, knowhira: training.loop.Trainer.train_step) against
           an HF Trainer + peft pipeline in the style of LLM-Adapters' finetune.py (peft LoRA, peft
           HiRA): transformers.Trainer, DataCollatorForSeq2Seq(pad_to_multiple_of=8), no length
           grouping, HF's mean loss, AdamW; the same model, tokenised examples (the recipe's own,
           default protocol: loss on the answer), batch, cutoff and rate. Each round runs every
           pipeline for --peer_steps timed steps after one untimed one (HF: a fresh Trainer per round,
           its steps timed by a callback); tokens/s = non-padding tokens / step time.
evaluation examples/s on the same --eval_n BoolQ test prompts: ours (evaluate's generate_answers on the
           MERGED model, batch 16, greedy and 4 beams, 32 new tokens) against LLM-Adapters'
           commonsense_evaluate.py protocol (batch 1, 4 beams, 32 new tokens, the peft LoRA model
           unmerged as it loads it); and log-likelihood scoring before (one full forward per
           (prompt, candidate), the pre-eval/scoring.py way) and after (eval/scoring.py).
machine    the fp32 GEMM FLOP/s of this machine (a --gemm_dim square matmul), next to each training
           pipeline's model FLOP/s (6 * N_matmul * tokens / s: bench.common.FLOP_FORMULA).
"""
import copy
import gc
import time

import torch

from scripts.bench.common import (FLOP_FORMULA, matmul_params, median, print_table, ratio, sync,
                                  time_interleaved)
from scripts.bench.step import RecipeStep, recipe_values, targets_for

OURS = ("lora", "hira", "knowhira")
THEIRS = {"hf-peft-lora": "lora", "hf-peft-hira": "hira"}


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


class HFTrainerSteps:
    """LLM-Adapters' finetune.py pipeline (HF Trainer + peft): `__call__` runs one round of `steps`
    steps with a fresh Trainer; `times`/`tokens` collect each timed step."""

    def __init__(self, values: dict, kind: str, steps: int, out_dir):
        from peft import HiraConfig, LoraConfig, get_peft_model

        from data.commonsense import load_train_data, split_validation
        from data.options import DataOptions
        from data.protocols import get_protocol
        from models.get_models import load_base_model
        from training.loop import LoopConfig

        model, self.tokenizer = load_base_model(values["model_name"])
        targets = values["target_modules"].split(",")
        config = (LoraConfig(r=values["r_ab"], lora_alpha=values["lora_alpha"], target_modules=targets,
                             lora_dropout=0.0, task_type="CAUSAL_LM") if kind == "lora" else
                  HiraConfig(r=values["r_ab"], target_modules=targets, task_type="CAUSAL_LM"))
        self.model = get_peft_model(model, config)
        d = DataOptions.from_values(values)
        protocol = get_protocol(d.protocol)
        on_inputs = protocol.train_on_inputs if d.train_on_inputs is None else d.train_on_inputs
        train, _ = split_validation(load_train_data(d.data_dir, d.dataset), d.val_size)
        self.features = [protocol.train_example(self.tokenizer, r, d.cutoff_len, on_inputs) for r in train]
        self.values, self.steps, self.out_dir = values, steps, out_dir
        self.lr = LoopConfig.from_values(values).lr
        self.n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.times, self.tokens, self.round = [], [], 0

    def __call__(self) -> None:
        import transformers

        record = {"t": None}
        times, tokens = self.times, self.tokens

        class Clock(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                record["t"] = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step > 1:  # the first step of a round builds the optimizer state
                    times.append(time.perf_counter() - record["t"])

        class Counting(transformers.DataCollatorForSeq2Seq):
            def __call__(self, features, return_tensors=None):
                batch = super().__call__(features, return_tensors)
                tokens.append(int(batch["attention_mask"].sum()))
                return batch

        args = transformers.TrainingArguments(
            output_dir=str(self.out_dir), per_device_train_batch_size=self.values["batch"],
            gradient_accumulation_steps=1, max_steps=self.steps, learning_rate=self.lr,
            warmup_steps=0, logging_steps=10 ** 6, save_strategy="no", report_to=[], train_sampling_strategy="random",
            seed=42 + self.round, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
            dataloader_num_workers=0)
        collate = Counting(self.tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)
        trainer = transformers.Trainer(model=self.model, args=args, train_dataset=self.features,
                                       data_collator=collate, callbacks=[Clock()])
        n_before = len(tokens)
        trainer.train()
        del tokens[n_before]  # the untimed first step's batch
        self.round += 1


def bench_training(args, kind: str, model_dir: str, data: dict, out_dir, matmul: int, device) -> dict:
    """Our recipe's step against HF Trainer + peft, --peer_rounds rounds of --peer_steps steps each."""
    ours = {m: RecipeStep(recipe_values(args, kind, model_dir, m, data, out_dir)) for m in OURS}
    theirs = {name: HFTrainerSteps(recipe_values(args, kind, model_dir, peft_kind, data, out_dir),
                                   peft_kind, args.peer_steps + 1, out_dir / name)
              for name, peft_kind in THEIRS.items()}
    times, tokens = {m: [] for m in ours}, {m: [] for m in ours}
    for _ in range(args.peer_rounds):
        for m, step in ours.items():
            step()  # untimed, as HF's first step of a round
            first = len(step.tokens)
            times[m] += time_interleaved({m: step}, args.peer_steps, 0, device)[m]
            tokens[m] += step.tokens[first:]
        for hf in theirs.values():
            hf()
    tokens_per_s = {m: sum(tokens[m]) / sum(times[m]) for m in ours}
    tokens_per_s.update({n: sum(hf.tokens) / sum(hf.times) for n, hf in theirs.items()})
    res = {"tokens_per_s": tokens_per_s,
           "median_step_s": {**{m: median(t) for m, t in times.items()},
                             **{n: median(hf.times) for n, hf in theirs.items()}},
           "trainable_params": {**{m: s.n_trainable for m, s in ours.items()},
                                **{n: hf.n_trainable for n, hf in theirs.items()}},
           "model_tflops_per_s": {}, "batch": args.step_batch, "rounds": args.peer_rounds,
           "steps_per_round": args.peer_steps, "flop_formula": FLOP_FORMULA}
    res["model_tflops_per_s"] = {k: 6 * matmul * v / 1e12 for k, v in tokens_per_s.items()}
    res["ratios"] = {"lora / hf-peft-lora": ratio(tokens_per_s["lora"], tokens_per_s["hf-peft-lora"]),
                     "hira / hf-peft-hira": ratio(tokens_per_s["hira"], tokens_per_s["hf-peft-hira"]),
                     "knowhira / hf-peft-hira": ratio(tokens_per_s["knowhira"], tokens_per_s["hf-peft-hira"])}
    del ours, theirs
    gc.collect()
    return res


def full_forward_scores(model, pairs, pad_id: int, batch_size: int) -> list[float]:
    """The scoring before eval/scoring.py: one right-padded full forward per (context, continuation)."""
    from eval.runtime import model_device
    from utils.batching import pad

    out, device = [], model_device(model)
    with torch.inference_mode():
        for s in range(0, len(pairs), batch_size):
            batch = pairs[s:s + batch_size]
            ids, mask = pad([c + r for c, r in batch], pad_id, "right")
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, (c, r) in enumerate(batch):
                logp = torch.log_softmax(logits[row, len(c) - 1:len(c) + len(r) - 1].float(), -1)
                out.append(logp.gather(1, torch.tensor(r, device=device)[:, None]).sum().item())
    return out


def bench_evaluation(args, model, tokenizer, targets: list[str], device) -> dict:
    """Ours (merged, batch 16, greedy / 4 beams) vs LLM-Adapters' evaluator (peft LoRA unmerged,
    batch 1, 4 beams), and loglik scoring before/after single-pass."""
    from peft import LoraConfig, get_peft_model

    from data.commonsense import load_task_split
    from data.protocols import get_protocol
    from eval.generate import generate_answers
    from eval.scoring import score_token_pairs
    from utils.batching import pad_token_id

    records = load_task_split(args.data_dir, "boolq", "test")[:args.eval_n]
    protocol = get_protocol("llm_adapters")
    prompts = [protocol.eval_prompt_ids(tokenizer, r) for r in records]
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=args.r, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")).eval()
    with torch.no_grad():  # a trained-looking adapter: non-zero B
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()

    def gen(model, batch, beams):
        return lambda: generate_answers(model, tokenizer, prompts, batch_size=batch, max_new_tokens=32,
                                        beam_size=beams, show_progress=False)
    runs = {"ours batch 16 greedy (merged)": gen(merged, 16, 1),
            "ours batch 16, 4 beams (merged)": gen(merged, 16, 4),
            "LLM-Adapters: batch 1, 4 beams (peft unmerged)": gen(peft_model, 1, 4)}
    pad_id = pad_token_id(tokenizer)
    words = [tokenizer(f"the correct answer is {w}", add_special_tokens=False)["input_ids"] for w in ("true", "false")]
    pairs = [(p, w) for p in prompts for w in words]
    runs["loglik before (full forward per pair, batch 16)"] = lambda: full_forward_scores(merged, pairs, pad_id, 16)
    runs["loglik after (eval/scoring.py, batch 16)"] = lambda: score_token_pairs(merged, pairs, pad_id, batch_size=16,
                                                                                  show_progress=False)
    times = time_interleaved(runs, args.peer_rounds, 1, device)
    per_s = {k: len(prompts) / median(t) for k, t in times.items()}
    before = full_forward_scores(merged, pairs, pad_id, 16)
    after = score_token_pairs(merged, pairs, pad_id, batch_size=16, show_progress=False)
    names = list(runs)
    return {"examples_per_s": per_s, "n_examples": len(prompts),
            "loglik_max_abs_diff": max(abs(a - b) for a, b in zip(before, after)),
            "ratios": {"ours greedy / LLM-Adapters": ratio(per_s[names[0]], per_s[names[2]]),
                       "ours 4 beams / LLM-Adapters": ratio(per_s[names[1]], per_s[names[2]]),
                       "loglik after / before": ratio(per_s[names[4]], per_s[names[3]])}}


def bench_peers(args, kind: str, model_dir: str, data: dict, out_dir, device) -> dict:
    """(f) on the model folder `model_dir` (bench.step.prepare_models; `kind` smollm2 or gptneo_shaped)."""
    from models.get_models import load_base_model

    model, tokenizer = load_base_model(model_dir)
    model = model.to(device).eval()
    matmul = matmul_params(model)
    res = {"model": kind, "gemm_fp32_tflops": gemm_flops(device, args.gemm_dim) / 1e12, "gemm_dim": args.gemm_dim}
    res["training"] = bench_training(args, kind, model_dir, data, out_dir, matmul, device)
    res["evaluation"] = bench_evaluation(args, model, tokenizer, targets_for(kind, args), device)
    tr, ev = res["training"], res["evaluation"]
    print_table(f"(f) training against HF Trainer + peft (LLM-Adapters finetune.py style), {kind}, batch "
                f"{tr['batch']}, {tr['rounds']} rounds x {tr['steps_per_round']} steps; machine fp32 GEMM "
                f"{res['gemm_fp32_tflops']:.3f} TFLOP/s",
                ["pipeline", "tokens/s", "median s/step", "model TFLOP/s", "share of GEMM", "trainable"],
                [[k, v, tr["median_step_s"][k], tr["model_tflops_per_s"][k],
                  tr["model_tflops_per_s"][k] / res["gemm_fp32_tflops"], tr["trainable_params"][k]]
                 for k, v in tr["tokens_per_s"].items()])
    print("  " + "; ".join(f"{k} = {v:.2f}" for k, v in tr["ratios"].items()))
    print_table(f"(f) evaluation against LLM-Adapters' evaluator, {ev['n_examples']} BoolQ test prompts, "
                f"32 new tokens", ["pipeline", "examples/s"], [[k, v] for k, v in ev["examples_per_s"].items()])
    print("  " + "; ".join(f"{k} = {v:.2f}" for k, v in ev["ratios"].items())
          + f"; loglik max |before - after| = {ev['loglik_max_abs_diff']:.2g}")
    return res
