"""(b) One optimizer step per method, as training takes it.

Registered methods (knowhira, hira, lora, fft) run THE RECIPE'S STEP: training.recipe.TrainRecipe
(model, method, r_ab, target_modules, batch, cutoff_len, a data mix) -> setup() -> trainer() ->
Trainer.train_step(): the task loss summed over response tokens / their count, + λ·L_reg, backward,
gradient clipping, AdamW step, scheduler step. peft's HiRA is not a registered method, so "peft-hira"
is timed the old way on the same batches: HF's mean `.loss`, backward, AdamW step (no clipping, no
scheduler), and labelled so in the JSON. With --torch_compile each registered method is also timed as
"<method>+compile" (the recipe with --torch_compile, models/compile.py), interleaved with its eager step:
every configuration's first step is timed alone (compile time = compiled first step - eager first step),
the steady state is the median of the same steps' eager / compiled ratios.

The records are real: the first --step_records training records of each --step_data task of
--data_dir, copied into a temporary data folder; sequence lengths are what those records give (up to
--cutoff_len). The recipe loads its model by name, so each model is written once to a temporary
Hugging Face folder (SmolLM2: the dequantised GGUF, checked tensor for tensor; GPT-Neo-shaped: random
weights with the GPT-2 tokenizer from --tokenizer) and every method loads that folder.
"""
import copy
import gc
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from scripts.bench.common import (FLOP_FORMULA, LORA_ALPHA, load_bit, matmul_params, median, paired_ratio,
                                  print_table, ratio, step_dtype, sync, time_interleaved)

STEP_METHODS = ("knowhira", "hira", "peft-hira", "lora", "fft")
PEFT_HIRA = "peft-hira"
RECIPE_STEP = ("recipe: training.loop.Trainer.train_step (token-normalised loss + regulariser, clip, AdamW, "
               "scheduler)")
PEFT_HIRA_STEP = ("HF mean loss, peft HiRA: model(**batch).loss + backward + AdamW step, no clipping, "
                  "no scheduler (peft's HiRA is not a registered method, so the recipe cannot build it)")


# ---- the models ----------------------------------------------------------------------------------
def gptneo_config(hidden: int, layers: int, heads: int):
    """GPT-Neo-1.3B's layer shapes (hidden 2048, 16 heads, ffn 4·hidden, vocab 50257), fewer layers."""
    from transformers import GPTNeoConfig

    n_pairs, odd = divmod(layers, 2)
    attention_types = [[["global", "local"], n_pairs]] if n_pairs else []
    if odd:
        attention_types.append([["global"], 1])
    return GPTNeoConfig(vocab_size=50257, hidden_size=hidden, num_layers=layers, num_heads=heads,
                        attention_types=attention_types, max_position_embeddings=2048,
                        window_size=256, use_cache=False)


def random_gptneo(args) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(gptneo_config(args.neo_hidden, args.neo_layers, args.neo_heads))


def targets_for(model_kind: str, args) -> list[str]:
    from models.targets import default_targets

    if model_kind == "smollm2":
        return args.targets.split(",")
    return default_targets("gpt_neo")


def save_model_folder(model: nn.Module, tokenizer, folder) -> Path:
    """`model` and `tokenizer` as a Hugging Face folder that load_base_model (so the recipe) reads.
    A GGUF-loaded model refuses save_pretrained, so the weights go through safetensors' save_model
    (a tied tensor stored once) plus config.json; the reload is checked tensor for tensor."""
    from safetensors.torch import save_model

    from models.get_models import load_base_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    config = copy.deepcopy(model.config)  # the weights are plain dequantised tensors now: not a GGUF model
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    again, _ = load_base_model(str(folder))
    mine, theirs = model.state_dict(), again.state_dict()
    bad = [k for k in mine if k not in theirs or not torch.equal(mine[k].cpu(), theirs[k])]
    if bad or set(theirs) - set(mine):
        raise RuntimeError(f"the model folder {folder} does not reload the same tensors: {bad[:5]}")
    return folder


def prepare_models(args, smol, smol_tokenizer, folder) -> dict:
    """{kind: {"dir", "matmul_params"}} for SmolLM2 (when loaded) and, with --gptneo_shaped, the
    random GPT-Neo-shaped model (needs --tokenizer)."""
    models = {}
    if smol is not None:
        models["smollm2"] = {"dir": str(save_model_folder(smol, smol_tokenizer, Path(folder) / "smollm2")),
                             "matmul_params": matmul_params(smol)}
    if args.gptneo_shaped:
        if not args.tokenizer or not Path(args.tokenizer).is_dir():
            print(f"(b)/(c) GPT-Neo-shaped skipped: the GPT-2 tokenizer folder {args.tokenizer!r} does not "
                  f"exist (--tokenizer or env KNOWHIRA_TOKENIZER_DIR)")
        else:
            from transformers import AutoTokenizer

            neo = random_gptneo(args)
            models["gptneo_shaped"] = {
                "dir": str(save_model_folder(neo, AutoTokenizer.from_pretrained(args.tokenizer),
                                             Path(folder) / "gptneo_shaped")),
                "matmul_params": matmul_params(neo), "layers": args.neo_layers}
            del neo
            gc.collect()
    return models


# ---- the data ------------------------------------------------------------------------------------
def prepare_data(args, folder) -> dict:
    """A data folder holding the first --step_records training records of each --step_data task
    (real records of --data_dir), so each method's setup tokenizes a few records, not thousands."""
    from data.commonsense import load_task_split

    folder, counts = Path(folder), {}
    for task in [t.strip() for t in args.step_data.split(",") if t.strip()]:
        records = load_task_split(args.data_dir, task, "train")[:args.step_records]
        name = records[0]["task"]  # the canonical folder name
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "train.json").write_text(json.dumps(records))
        counts[name] = len(records)
    return {"data_dir": str(folder), "dataset": "mix:" + ",".join(counts), "records": counts,
            "source": str(args.data_dir), "cutoff_len": args.cutoff_len}


# ---- one step per method -------------------------------------------------------------------------
COMPILED = "+compile"  # "knowhira+compile": the recipe's step with --torch_compile (models/compile.py)


def recipe_values(args, model_kind: str, model_dir: str, method: str, data: dict, out_dir) -> dict:
    """The TrainRecipe option values of one (b)/(c) configuration (method "<m>+compile": m, --torch_compile)."""
    compiled = method.endswith(COMPILED)
    method = method.removesuffix(COMPILED)
    return {"model_name": model_dir, "load_bit": load_bit(step_dtype(args, recipe_device())),
            "torch_compile": compiled, "peft_type": method, "r_ab": args.r,
            "target_modules": ",".join(targets_for(model_kind, args)), "lora_alpha": LORA_ALPHA,
            "data_dir": data["data_dir"], "dataset": data["dataset"],
            "cutoff_len": args.cutoff_len, "val_size": 0, "batch": args.step_batch, "grad_acc": 1,
            "seed": 42, "eval_strategy": "no", "output_folder": str(out_dir),
            "run_name": f"bench_{model_kind}_{method}{'_compiled' if compiled else ''}"}


def recipe_device() -> torch.device:
    """Where the recipe trains: its Accelerator takes the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RecipeStep:
    """A registered method through the recipe; calling it runs Trainer.train_step()."""

    kind = RECIPE_STEP

    def __init__(self, values: dict):
        from training.recipe import TrainRecipe

        self.recipe = TrainRecipe.from_values(values).setup()
        self.trainer = self.recipe.trainer()
        self.device, self.n_trainable = self.recipe.accelerator.device, self.recipe.n_trainable
        self.tokens: list[int] = []
        self.dtype = str(self.recipe.model.dtype)

    def __call__(self) -> None:
        self.tokens.append(self.trainer.train_step()["tokens"])


class PeftHiraStep:
    """peft's HiRA, timed the old way (HF mean loss, AdamW, no clipping) on the records, order and
    batches the recipe's Trainer takes at the same step (same options, one process)."""

    kind = PEFT_HIRA_STEP

    def __init__(self, values: dict):
        from peft import HiraConfig, get_peft_model

        from data.commonsense import load_train_data, split_validation
        from data.options import DataOptions
        from data.tokenize import Collator, tokenize_record
        from models.get_models import ModelOptions, load_base_model
        from training.loop import LoopConfig

        m, d, self.cfg = (ModelOptions.from_values(values), DataOptions.from_values(values),
                          LoopConfig.from_values(values))
        train, _ = split_validation(load_train_data(d.data_dir, d.dataset), d.val_size)
        torch.manual_seed(self.cfg.seed)
        model, tokenizer = load_base_model(**asdict(m))
        self.device = recipe_device()
        self.features = [tokenize_record(tokenizer, r, d.cutoff_len, d.train_on_inputs) for r in train]
        self.collate = Collator(tokenizer)
        self.model = get_peft_model(model.to(self.device), HiraConfig(
            r=values["r_ab"], target_modules=values["target_modules"].split(","), task_type="CAUSAL_LM"))
        self.model.train()
        self.dtype = str(model.dtype)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.per_epoch = len(self.features) // self.cfg.batch
        self.step, self.tokens = 0, []

    def __call__(self) -> None:
        from training.order import epoch_order

        b = self.cfg.batch
        epoch, k = divmod(self.step, self.per_epoch)
        order = epoch_order(len(self.features), self.cfg.seed, epoch)
        batch = {key: v.to(self.device)
                 for key, v in self.collate([self.features[i] for i in order[k * b:(k + 1) * b]]).items()}
        self.model(**batch, use_cache=False).loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens.append(int(batch["attention_mask"].sum()))


def make_step(name: str, values: dict):
    """The timed step of a configuration: peft's HiRA (not a registered method) its own, every
    registered method the recipe's."""
    return {PEFT_HIRA: PeftHiraStep}.get(name, RecipeStep)(values)


# ---- (b) ---------------------------------------------------------------------------------------
def first_steps(steps: dict, device) -> dict[str, float]:
    """Seconds of each configuration's first step (the same batch for all): a compiled one compiles there."""
    first = {}
    for name, step in steps.items():
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        first[name] = time.perf_counter() - t0
    return first


def compile_numbers(first: dict, times: dict) -> dict:
    """Per compiled method: compile time = its first step - the eager first step (same batch, both
    allocate AdamW's state); the steady state as the median over timed steps of eager / compiled of the
    SAME step (interleaved: the same batch), which a recompile (a new guard, e.g. the first batch
    without padding) or a batch of other length moves by one rank only, with its bootstrap 95% interval
    (bench.common.paired_ratio); and the medians of each."""
    out = {}
    for name in first:
        if name.endswith(COMPILED):
            m = name.removesuffix(COMPILED)
            paired = paired_ratio(times[m], times[name])
            out[m] = {"first_step_s": first[name], "eager_first_step_s": first[m],
                      "compile_s": first[name] - first[m], "steady_s": median(times[name]),
                      "eager_steady_s": median(times[m]), "eager_over_compiled": paired["median"],
                      "eager_over_compiled_ci95": paired["ci95"],
                      "eager_over_compiled_per_step": paired["per_pair"]}
    return out


def bench_step_model(args, model_kind: str, model: dict, data: dict, out_dir) -> dict:
    from torch._dynamo.utils import counters

    device = recipe_device()
    dtype_name = step_dtype(args, device)
    methods = args.methods.split(",")
    if getattr(args, "torch_compile", False):  # each registered method also compiled, timed beside it
        methods += [m + COMPILED for m in methods if m != PEFT_HIRA]
    steps, setup_s = {}, {}
    for m in methods:
        t0 = time.perf_counter()
        steps[m] = make_step(m, recipe_values(args, model_kind, model["dir"], m, data, out_dir))
        setup_s[m] = time.perf_counter() - t0
    # with compiled configurations, every one's first step is timed alone (its compile time), then the rest
    first = first_steps(steps, device) if any(m.endswith(COMPILED) for m in methods) else {}
    graphs_after_first = counters["stats"]["unique_graphs"]
    times = time_interleaved(steps, args.step_repeats, args.step_warmup, device)
    recompiled = counters["stats"]["unique_graphs"] - graphs_after_first
    timed_tokens = {m: s.tokens[-args.step_repeats:] for m, s in steps.items()}
    trainable = {m: s.n_trainable for m, s in steps.items()}
    kinds = {m: s.kind for m, s in steps.items()}
    model_dtype = {m: s.dtype for m, s in steps.items()}
    del steps
    gc.collect()
    med = {m: median(t) for m, t in times.items()}
    mean_tokens = {m: sum(t) / len(t) for m, t in timed_tokens.items()}
    tokens = mean_tokens[methods[0]]  # every method takes the same batches
    n_matmul = model["matmul_params"]
    flops = 6 * n_matmul * tokens
    res = {
        "model": model_kind, "dtype": dtype_name, "model_dtype": model_dtype, "device": str(device),
        "targets": targets_for(model_kind, args), "r": args.r, "batch": args.step_batch,
        "cutoff_len": args.cutoff_len, "tokens": tokens, "mean_tokens_per_step": mean_tokens,
        "data": {k: v for k, v in data.items() if k != "data_dir"},  # data_dir: a temporary copy
        "protocol": (f"one optimizer step per call, median of {args.step_repeats} after "
                     + (f"1 + {args.step_warmup} warmup (the first timed alone: first_step_s)" if first
                        else f"{args.step_warmup} warmup")
                     + ", methods interleaved, every method on the same batches of real records; tokens = mean "
                     "non-padding tokens per timed step"),
        "step_kind": kinds,
        "median_s": med, "all_s": times,
        "tokens_per_s": {m: sum(timed_tokens[m]) / sum(times[m]) for m in methods},
        "trainable_params": trainable, "setup_s": setup_s, "first_step_s": first, "matmul_params": n_matmul,
        "flops_per_step_fft_equiv": flops, "flop_formula": FLOP_FORMULA,
    }
    compiled = compile_numbers(first, times)
    if compiled:
        res["compile"] = {"per_method": compiled, "graphs_compiled_after_the_first_step": recompiled,
                          "what": "models/compile.py: each decoder block, dynamic=True; compile_s = first "
                                  "step compiled - first step eager (same batch)"}
    ref = {k: med[k] for k in ("lora", "peft-hira", "fft") if k in med}
    res["ratios"] = {f"{m} / {k}": ratio(med[m], v) for m in methods for k, v in ref.items()}
    rows = [[m + (" (HF mean loss)" if m == PEFT_HIRA else ""), med[m] * 1e3, res["tokens_per_s"][m]]
            + [ratio(med[m], v) for v in ref.values()] + [trainable[m], setup_s[m]] for m in methods]
    header = (["method", "ms/step", "tokens/s"] + [f"/ {k}" for k in ref]
              + ["trainable", "setup s"])
    if device.type == "cuda":
        res["tflops"] = {m: flops / med[m] / 1e12 for m in methods}
        res["peak_tflops_assumed"] = args.peak_tflops
        res["share_of_peak"] = {m: res["tflops"][m] / args.peak_tflops for m in methods}
        header += ["TFLOP/s", "share of peak"]
        for row, m in zip(rows, methods):
            row += [res["tflops"][m], res["share_of_peak"][m]]
    print_table(f"(b) training step, {model_kind}, {dtype_name}, batch {args.step_batch}, "
                f"{tokens:.0f} tokens/step on average (cutoff {args.cutoff_len}), r={args.r} "
                f"(median of {args.step_repeats})", header, rows)
    print(f"  registered methods: {RECIPE_STEP}")
    for m, c in compiled.items():
        print(f"  {m}{COMPILED} (--torch_compile): compile {c['compile_s']:.1f} s (first step "
              f"{c['first_step_s']:.1f} s vs eager {c['eager_first_step_s']:.2f} s); steady state eager / compiled "
              f"{c['eager_over_compiled']:.3f}x [{c['eager_over_compiled_ci95'][0]:.3f}, "
              f"{c['eager_over_compiled_ci95'][1]:.3f}] (median of the same steps' ratios, bootstrap 95%; medians "
              f"{c['eager_steady_s'] * 1e3:.4g} / {c['steady_s'] * 1e3:.4g} ms)"
              f"{f'; {recompiled} graphs compiled after the first step' if recompiled else ''}")
    if PEFT_HIRA in methods:
        print(f"  peft-hira: {PEFT_HIRA_STEP}")
    if device.type == "cuda":
        print(f"  assumed GPU peak: {args.peak_tflops} TFLOP/s (bf16 dense; issue: about 790 on "
              f"an H100/H200). {FLOP_FORMULA}")
    return res
