"""(g) and (h): evaluation against the tools users would otherwise run, on the same questions and model.

g  examples/s on the same --eval_n BoolQ test prompts: ours (evaluate's generate_answers on the MERGED
   model, batch 16, greedy and 4 beams, 32 new tokens) against LLM-Adapters' commonsense_evaluate.py
   protocol (batch 1, 4 beams, 32 new tokens, the peft LoRA model unmerged as it loads it); and
   log-likelihood scoring before (one full forward per (prompt, candidate), the pre-eval/scoring.py way)
   and after (eval/scoring.py).
h  cloze scoring (`--eval_mode cloze`: eval.cloze.cloze_rows, encoding to per-choice scores) against
   lm-eval's HFLM.loglikelihood (what lm-eval runs for a multiple-choice task, given the same
   (context, continuation) strings; its own encoding, sorting and batching) on the first --cloze_n ARC-Easy
   test questions, the same model object and --cloze_batch as each one's batch size (ours counts questions
   per forward, each with all its choices; HFLM counts (context, continuation) requests, so ours also runs
   at --cloze_batch / 4 questions, about as many sequences per forward). --cloze_rounds rounds, the
   configurations interleaved in each; the per-round ratios (HFLM's time / ours) give the median and a
   bootstrap 95% interval. The scores of both are compared (max |difference|).
"""
import copy

import torch

from scripts.bench.common import median, paired_ratio, print_table, ratio, time_interleaved


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


def bench_cloze_vs_lm_eval(args, model, tokenizer, device) -> dict:
    """(h): ours (cloze_rows) against lm-eval's HFLM on the same ARC-Easy questions; {} without lm-eval."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print("(h) skipped: lm-eval is not installed (requirements-dev.txt)")
        return {}
    from data.cloze import cloze_requests
    from data.commonsense import load_task_split
    from data.questions import parse_record
    from eval.cloze import cloze_rows

    task, b = "ARC-Easy", args.cloze_batch
    records = load_task_split(args.data_dir, task, "test")[:args.cloze_n]
    ids = list(range(len(records)))
    pairs = [cloze_requests(parse_record(r, task, i), task)[0] for i, r in zip(ids, records)]
    requests = [Instance("loglikelihood", doc={}, arguments=p, idx=k, metadata=("arc_easy", i, 1))
                for i, question in zip(ids, pairs) for k, p in enumerate(question)]
    model = model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=b)
    small = max(1, b // 4)

    def ours(batch):
        return lambda: cloze_rows(model, tokenizer, records, ids, task, batch_size=batch, show_progress=False)
    runs = {f"ours (eval/cloze.py), batch {b} questions": ours(b),
            f"ours, batch {small} questions": ours(small),
            f"lm-eval HFLM.loglikelihood, batch {b} requests": lambda: lm.loglikelihood(requests, disable_tqdm=True)}
    times = time_interleaved(runs, args.cloze_rounds, 1, device)
    mine = [s for row in cloze_rows(model, tokenizer, records, ids, task, batch_size=b, show_progress=False)
            for s in row["scores"]]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    names = list(runs)
    per_s = {k: len(records) / median(t) for k, t in times.items()}
    return {"task": task, "n_examples": len(records), "n_requests": len(requests), "batch": b,
            "rounds": args.cloze_rounds, "examples_per_s": per_s, "all_s": times,
            "score_max_abs_diff": max(abs(x - y) for x, y in zip(mine, theirs)),
            "ratios": {"ours / lm-eval HFLM": paired_ratio(times[names[2]], times[names[0]]),
                       f"ours batch {small} / lm-eval HFLM": paired_ratio(times[names[2]], times[names[1]])}}


def bench_peer_eval(args, kind: str, model_dir: str, device, sections: list[str]) -> dict:
    """(g) and/or (h) (the letters in `sections`) on the model folder `model_dir` (bench.step.prepare_models)."""
    from models.get_models import load_base_model
    from scripts.bench.step import targets_for

    model, tokenizer = load_base_model(model_dir)
    model = model.to(device).eval()
    res = {}
    if "g" in sections:
        ev = res["evaluation"] = bench_evaluation(args, model, tokenizer, targets_for(kind, args), device)
        print_table(f"(g) evaluation against LLM-Adapters' evaluator, {ev['n_examples']} BoolQ test prompts, "
                    f"32 new tokens", ["pipeline", "examples/s"], [[k, v] for k, v in ev["examples_per_s"].items()])
        print("  " + "; ".join(f"{k} = {v:.2f}" for k, v in ev["ratios"].items())
              + f"; loglik max |before - after| = {ev['loglik_max_abs_diff']:.2g}")
    cloze = bench_cloze_vs_lm_eval(args, model, tokenizer, device) if "h" in sections else {}
    if cloze:
        res["cloze_vs_lm_eval"] = cloze
        print_table(f"(h) cloze scoring against lm-eval's HFLM, {kind}, {cloze['n_examples']} {cloze['task']} test "
                    f"questions ({cloze['n_requests']} requests), median of {cloze['rounds']} rounds",
                    ["pipeline", "examples/s"], [[k, v] for k, v in cloze["examples_per_s"].items()])
        print("  " + "; ".join(f"{k} = {p['median']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"
                               for k, p in cloze["ratios"].items())
              + f"; scores max |ours - lm-eval| = {cloze['score_max_abs_diff']:.2g}")
    return res
