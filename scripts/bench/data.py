"""Tokenised-feature cache at Commonsense-170K size: the Arrow files of data/features.py against the .npz
cache (data/cache.py) they replaced, cold and warm, with 1 and 2 processes launched by torchrun.

    .venv/bin/python -m scripts.bench.data --baseline_tree /tmp/base --out docs/bench_data_cpu.json

--baseline_tree: a checkout of the commit before the change (it holds data/cache.py), e.g.
`git worktree add --detach /tmp/base 0a305c4`. The training file: the local <task>/train.json files of
--data_dir, concatenated in task order and repeated to --records records, written as
<work>/commonsense_170k.json (what `--dataset common_170k` reads). Each configuration runs
`torchrun --nproc_per_node N` on a rank script that does what training/recipe.py's setup does for
the training features, with the code of its tree (PYTHONPATH = the tree): load the records, hold
out 120 for validation, Accelerator(cpu=True) (a gloo group for 2 ranks), the tokenizer, then the
timed call: the .npz cache (every rank tokenises on a miss, rank 0 writes; every rank loads the
file into lists on a hit) or data/features.py (the main process first, the other rank memory-maps
its file). "cold" = an empty --cache_dir, "warm" = the same folder again. Per rank it reports the
timed call's seconds, one pass over every feature afterwards (what --group_by_length and an epoch
read), the peak RSS (getrusage ru_maxrss, shared file pages included) and the PSS at the end
(/proc/self/smaps_rollup: shared pages divided among the processes that map them).
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("ARC-Challenge", "ARC-Easy", "boolq", "openbookqa", "piqa")
OPTIONS = {"protocol": "hira", "cutoff_len": 256, "train_on_inputs": False, "answer_format": "label"}

RANK = """
import json, os, resource, sys, time
variant, data_dir, tokenizer_dir, cache_dir, out = sys.argv[1:6]
OPTIONS = json.loads(sys.argv[6])
from accelerate import Accelerator
from transformers import AutoTokenizer
from data.answer_format import train_example
from data.commonsense import load_train_data, split_validation
from data.protocols import get_protocol

start = time.perf_counter()
train, _ = split_validation(load_train_data(data_dir, "common_170k"), 120)
acc = Accelerator(cpu=True)
tok = AutoTokenizer.from_pretrained(tokenizer_dir)
protocol = get_protocol(OPTIONS["protocol"])
example = lambda r: train_example(protocol, tok, r, None, OPTIONS["answer_format"], OPTIONS["cutoff_len"],
                                  OPTIONS["train_on_inputs"])
load = time.perf_counter() - start
acc.wait_for_everyone()
t0 = time.perf_counter()
if variant == "npz":
    from data.cache import cached_features
    features = cached_features(train, tok, OPTIONS, lambda rs: [example(r) for r in rs], cache_dir,
                               write=acc.is_main_process)
else:
    from data.features import tokenized
    with acc.main_process_first():
        features = tokenized(train, tok, OPTIONS, example, cache_dir, "train", write=acc.is_main_process)
seconds = time.perf_counter() - t0
t1 = time.perf_counter()
tokens = sum(len(f["input_ids"]) for f in features)
read = time.perf_counter() - t1
pss = next((int(line.split()[1]) / 1024 for line in open("/proc/self/smaps_rollup") if line.startswith("Pss:")), None)
acc.wait_for_everyone()
json.dump({"rank": acc.process_index, "features": len(features), "tokens": tokens, "seconds": round(seconds, 2),
           "read_seconds": round(read, 2), "setup_seconds": round(load, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "pss_end_mb": round(pss) if pss is not None else None}, open(f"{out}.{acc.process_index}", "w"))
"""


def build_file(data_dir: Path, n: int, out: Path) -> dict:
    """<out>/commonsense_170k.json: the tasks' train.json records in task order, repeated to n records."""
    pool = []
    for task in TASKS:
        path = data_dir / task / "train.json"
        if path.is_file():
            pool += json.loads(path.read_text())
    records = [pool[i % len(pool)] for i in range(n)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "commonsense_170k.json").write_text(json.dumps(records))
    return {"distinct_records": len(pool), "records": n}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tree: Path, variant: str, nproc: int, data: Path, tokenizer: str, cache: Path, work: Path) -> dict:
    """One torchrun of the rank script with `tree`'s code; the ranks' reports and the whole wall time."""
    script, out = work / "rank.py", work / f"report-{variant}-{nproc}"
    script.write_text(RANK)
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), variant,
                           str(data), tokenizer, str(cache), str(out), json.dumps(OPTIONS)],
                          cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{variant} x{nproc} failed:\n{done.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(nproc)]
    return {"wall_seconds": round(wall, 1), "ranks": ranks}


def table(results: list[dict]) -> str:
    lines = ["| cache | processes | run | seconds (per rank) | one pass over the features, s | "
             "peak RSS MB (per rank) | PSS at end MB (per rank) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        ranks = r["ranks"]
        cell = lambda k: " / ".join(str(x[k]) for x in ranks)  # noqa: E731
        lines.append(f"| {r['cache']} | {r['processes']} | {r['run']} | {cell('seconds')} | {cell('read_seconds')} | "
                     f"{cell('peak_rss_mb')} | {cell('pss_end_mb')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline_tree", required=True, help="a checkout of the commit that holds data/cache.py")
    p.add_argument("--data_dir", default=os.environ.get("KNOWHIRA_DATA_DIR", "data/commonsense"))
    p.add_argument("--tokenizer", default=os.environ.get("KNOWHIRA_TOKENIZER_DIR", "/work/shared/tokenizers/gpt2"))
    p.add_argument("--records", type=int, default=170_000)
    p.add_argument("--processes", default="1,2")
    p.add_argument("--out", default="bench_data.json")
    args = p.parse_args(argv)
    base = Path(args.baseline_tree).resolve()
    if not (base / "data" / "cache.py").is_file():
        raise SystemExit(f"{base}/data/cache.py not found: --baseline_tree must be the commit before data/features.py")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        sizes = build_file(Path(args.data_dir), args.records, work / "data")
        results = []
        for nproc in [int(n) for n in args.processes.split(",")]:
            for variant, tree in (("npz", base), ("arrow", ROOT)):
                cache = work / f"cache-{variant}-{nproc}"
                for run in ("cold", "warm"):
                    r = launch(tree, variant, nproc, work / "data", args.tokenizer, cache, work)
                    results.append({"cache": variant, "processes": nproc, "run": run, **r})
                    print(json.dumps(results[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=base, capture_output=True, text=True).stdout
    report = {"command": "python -m scripts.bench.data " + " ".join(argv if argv is not None else sys.argv[1:]),
              "baseline_commit": commit.strip(), "tokenizer": args.tokenizer, "options": OPTIONS, **sizes,
              "cpu": os.cpu_count(), "results": results}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
