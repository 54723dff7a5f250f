"""The benchmark's flags and section dispatch: `python -m scripts.bench [flags]` calls main()."""
import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import scripts.bench as package
from scripts.bench.common import DEFAULT_SMOLLM2, DTYPES, SMOLLM2_TARGETS, load_smollm2, pick_device
from scripts.bench.step import STEP_METHODS
from scripts.bench.targets import target_checks


def parse_args(argv=None):
    from data.options import DEFAULT_DATA_DIR

    p = argparse.ArgumentParser(prog="python -m scripts.bench",
                                description=package.__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sections", default="a,b,c,d,e,f,g,h", help="comma list of a,b,c,d,e,f,g,h")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device of (a), (d), (e); (b)/(c) train where the recipe does (the GPU if any)")
    p.add_argument("--out", default="bench_results.json", help="JSON file for all results")
    p.add_argument("--smollm2", default=DEFAULT_SMOLLM2,
                   help="SmolLM2 GGUF file (or HF folder), env KNOWHIRA_SMOLLM2_GGUF; 'none' skips "
                        "what needs it")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="LLM-Adapters data folder, env KNOWHIRA_DATA_DIR: (b)/(c) train on its "
                        "<task>/train.json records, (e) reads boolq/test.json")
    p.add_argument("--r", type=int, default=32)
    g = p.add_argument_group("(a) layer")
    g.add_argument("--layer_dim", type=int, default=1024, help="in = out features")
    g.add_argument("--layer_in", type=int, default=None, help="override in features")
    g.add_argument("--layer_out", type=int, default=None, help="override out features")
    g.add_argument("--tokens", type=int, default=2048, help="tokens = layer_batch x seq")
    g.add_argument("--layer_batch", type=int, default=4)
    g.add_argument("--layer_dtype", default="fp32", choices=list(DTYPES))
    g.add_argument("--repeats", type=int, default=10)
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--infer_repeats", type=int, default=50,
                   help="repeats of the decode-shaped (1 token) forward")
    g = p.add_argument_group("(b)/(c) training step (the recipe's Trainer.train_step)")
    g.add_argument("--methods", default=",".join(STEP_METHODS))
    g.add_argument("--targets", default=SMOLLM2_TARGETS, help="SmolLM2 targets")
    g.add_argument("--dtype", default="auto", choices=["auto"] + list(DTYPES),
                   help="model dtype for (b)/(c) (the recipe's --load_bit: fp32 -> 32, bf16/fp16 -> "
                        "16); auto = fp32 on cpu, bf16 on cuda")
    g.add_argument("--step_batch", type=int, default=4, help="the recipe's --batch")
    g.add_argument("--cutoff_len", "--step_seq", dest="cutoff_len", type=int, default=256,
                   help="the recipe's --cutoff_len: records are as long as they are, up to this")
    g.add_argument("--step_data", default="boolq,openbookqa",
                   help="tasks whose train.json records (b)/(c) train on (the recipe's mix:...)")
    g.add_argument("--step_records", type=int, default=64,
                   help="first records taken of each --step_data task")
    g.add_argument("--step_repeats", type=int, default=5)
    g.add_argument("--step_warmup", type=int, default=1)
    g.add_argument("--torch_compile", action="store_true",
                   help="(b) also time each registered method with --torch_compile, interleaved with its eager "
                        "step: compile time (first step minus eager's) apart from the steady-state median")
    g.add_argument("--mem_steps", type=int, default=2, help="(c) steps per child (1st allocates AdamW)")
    g.add_argument("--child_timeout", type=float, default=1800)
    g.add_argument("--gptneo_shaped", action="store_true",
                   help="also run (b)/(c) on a random GPT-Neo-1.3B-shaped model with --neo_layers")
    g.add_argument("--tokenizer", default=os.environ.get("KNOWHIRA_TOKENIZER_DIR"),
                   help="GPT-2 tokenizer folder for the GPT-Neo-shaped model, env KNOWHIRA_TOKENIZER_DIR")
    g.add_argument("--peak_tflops", type=float, default=790.0,
                   help="GPU bf16 dense peak for the utilisation share (issue: ~790 on H100/H200)")
    g = p.add_argument_group("GPT-Neo-1.3B shapes ((b), (c), (d))")
    g.add_argument("--neo_hidden", type=int, default=2048)
    g.add_argument("--neo_ffn", type=int, default=None, help="(d) only; default 4 x hidden")
    g.add_argument("--neo_heads", type=int, default=16)
    g.add_argument("--neo_layers", type=int, default=2, help="layers of the (b)/(c) model")
    g.add_argument("--neo_total_layers", type=int, default=24, help="(d) extrapolation target")
    g = p.add_argument_group("(d) singular values")
    g.add_argument("--svd_layers", type=int, default=4, help="GPT-Neo-shaped layers measured")
    g.add_argument("--svd_repeats", type=int, default=1)
    g = p.add_argument_group("(e) evaluation")
    g.add_argument("--eval_n", type=int, default=32)
    g.add_argument("--gen_tokens", type=int, default=32, help="max_new_tokens (protocol default)")
    g.add_argument("--eval_batches", default="1,16")
    g.add_argument("--eval_methods", default="base,knowhira")
    g = p.add_argument_group("(f) training against HF Trainer + peft, (g) evaluation against LLM-Adapters' "
                             "evaluator, (h) cloze scoring against lm-eval's HFLM")
    g.add_argument("--peer_steps", type=int, default=30,
                   help="(f) timed steps of each pipeline, the same batches, interleaved step by step")
    g.add_argument("--peer_warmup", type=int, default=2, help="(f) untimed steps before them")
    g.add_argument("--peer_rounds", type=int, default=3, help="(g) timed repeats of each evaluation")
    g.add_argument("--gemm_dim", type=int, default=2048, help="the square fp32 matmul of the machine's FLOP/s")
    g.add_argument("--cloze_n", type=int, default=100, help="(h) ARC-Easy test questions")
    g.add_argument("--cloze_batch", type=int, default=16,
                   help="(h) batch size given to each (ours: questions; HFLM: requests)")
    g.add_argument("--cloze_rounds", type=int, default=10, help="(h) timed rounds (after one untimed)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = set(args.sections) - set("abcdefgh")
    if bad:
        p.error(f"unknown sections {sorted(bad)}; choose from a,b,c,d,e,f,g,h")
    if args.tokens % args.layer_batch:
        p.error("--tokens must be a multiple of --layer_batch")
    if args.step_repeats < 1 or args.step_warmup < 0 or args.step_records < args.step_batch:
        p.error("need --step_repeats >= 1, --step_warmup >= 0, --step_records >= --step_batch")
    if args.peer_steps < 1 or args.peer_warmup < 0 or min(args.cloze_n, args.cloze_batch, args.cloze_rounds) < 1:
        p.error("need --peer_steps >= 1, --peer_warmup >= 0, --cloze_n, --cloze_batch, --cloze_rounds >= 1")
    return args


def train_sections(args, results: dict, smol, tok, save) -> None:
    """(b), (c), (f), (g), (h): one temporary folder holds the records and the model folders they load."""
    from data.commonsense import DataError
    from scripts.bench.memory import MEMORY_METHOD_CPU, MEMORY_METHOD_CUDA, bench_memory_model
    from scripts.bench.step import bench_step_model, prepare_data, prepare_models, recipe_device

    if args.device == "cpu" and recipe_device().type == "cuda":
        print("note: (b)/(c) run on the GPU: the recipe's Accelerator takes it when there is one")
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        try:
            data = prepare_data(args, Path(tmp) / "data")
        except DataError as e:
            wanted = ", ".join(f"({s})" for s in sorted(set(args.sections) & set("bcfgh")))
            print(f"{wanted} skipped: they need real records (--data_dir, env KNOWHIRA_DATA_DIR): {e}")
            return
        models = prepare_models(args, smol, tok, Path(tmp) / "models")
        runs = Path(tmp) / "runs"
        if "b" in args.sections:
            results["step"] = {}
            for kind, model in models.items():
                results["step"][kind] = bench_step_model(args, kind, model, data, runs)
                if "layers" in model:
                    results["step"][kind]["layers"] = model["layers"]
                gc.collect()
                save()
        if "c" in args.sections:
            results["memory"] = {}
            for kind, model in models.items():
                results["memory"][kind] = bench_memory_model(args, kind, model, data, runs)
                save()
            print("  method: " + (MEMORY_METHOD_CUDA if recipe_device().type == "cuda"
                                  else MEMORY_METHOD_CPU))
        kind = "smollm2" if "smollm2" in models else next(iter(models), None)
        if "f" in args.sections and kind:
            from scripts.bench.peers import bench_peers

            results["peers"] = bench_peers(args, kind, models[kind]["dir"], data, runs, recipe_device())
            save()
        if ("g" in args.sections or "h" in args.sections) and kind:
            from scripts.bench.peer_eval import bench_peer_eval

            results.setdefault("peers", {"model": kind}).update(
                bench_peer_eval(args, kind, models[kind]["dir"], recipe_device(), args.sections))
            save()


def main(argv=None) -> dict:
    import torch

    args = parse_args(argv)
    device = pick_device(args.device)
    meta = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "host": platform.node(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
            "loadavg_start": os.getloadavg()}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    print(f"bench: device {device}{' (' + meta.get('gpu', '') + ')' if 'gpu' in meta else ''}, "
          f"torch {torch.__version__}, {meta['threads']} threads, load average "
          f"{meta['loadavg_start'][0]:.2f}")
    results: dict = {"meta": meta}

    def save():
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))

    if "a" in args.sections:
        from scripts.bench.layer import bench_layer

        results["layer"] = bench_layer(args, device)
        save()

    need_smol = any(s in args.sections for s in "bcdefgh")
    smol, tok = load_smollm2(args.smollm2, device) if need_smol else (None, None)

    if any(s in args.sections for s in "bcfgh"):
        train_sections(args, results, smol, tok, save)

    if "d" in args.sections:
        from scripts.bench.svd import bench_svd

        results["svd"] = bench_svd(args, device, smol)
        save()

    if "e" in args.sections:
        from data.commonsense import task_file

        if smol is None or not task_file(args.data_dir, "boolq", "test").is_file():
            print(f"(e) skipped: needs SmolLM2 and {task_file(args.data_dir, 'boolq', 'test')}")
        else:
            from scripts.bench.evaluation import bench_eval

            results["eval"] = bench_eval(args, device, smol, tok)
            save()

    results["checks"] = target_checks(results)
    results["meta"]["loadavg_end"] = os.getloadavg()
    print("\n== target checks (issue)")
    for c in results["checks"]:
        print(f"{c['result']}  {c['check']} = {c['value']:.3g} (target {c['op']} {c['limit']}): "
              f"{c['detail']}")
    if not results["checks"]:
        print("(none of the checked sections ran)")
    # the end value counts the benchmark's own threads (one per core); only the start one says whether
    # something else was running
    print(f"\nload average at start {meta['loadavg_start'][0]:.2f}, at end "
          f"{results['meta']['loadavg_end'][0]:.2f} (its own threads) on {meta['cpus']} cpus"
          + (": the machine was busy at the start, timings are indicative" if device.type == "cpu" and
             meta['loadavg_start'][0] > 0.5 * (meta['cpus'] or 1) else ""))
    save()
    print(f"wrote {args.out}")
    return results
