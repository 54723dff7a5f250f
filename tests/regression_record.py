"""Record what every method computes on a fixed tiny run, to hold later refactors to "no behaviour
change" (tests/test_regression.py compares against tests/data/regression_baseline.json).

For each method: a tiny RANDOMLY INITIALISED GPT-Neo (tests/conftest.tiny_model("gpt_neo"), the real
GPT-2 tokenizer), the first 40 real training records of boolq and openbookqa, 3 optimizer steps
through the CLI entry point (train_knowhira.main), then evaluation of 4 seeded test questions per
task in generate and loglik mode. Recorded: every logged loss, regulariser, gradient norm and
validation loss, and every prediction (generated text, log-likelihood scores).

    KNOWHIRA_DATA_DIR=... KNOWHIRA_TOKENIZER_DIR=... PYTHONPATH=. python tests/regression_record.py OUT.json

(from the repository root; PYTHONPATH=. puts the project's modules beside tests/, which Python puts on
sys.path for the script; after `pip install -e .`, as scripts/setup_env.sh does, it is not needed)
"""
import json
import os
import sys
from pathlib import Path

import torch

METHODS = ("knowhira", "hira", "hira_sb", "kasa", "lora", "dora", "ia3", "fft")
TASKS = ("boolq", "openbookqa")
LOG_KEYS = ("step", "loss_task", "loss_reg", "loss_total", "lr", "grad_norm", "val_loss")
# per-method flags of the recorded runs (fft: a smaller rate; fft and ia3 have no rank)
FLAGS = {"fft": ["--lr", "1e-3"], "ia3": [], "hira_sb": ["--r_ab", "4", "--sb_init_batches", "2"]}


def make_inputs(work: Path, data_dir: Path, tokenizer_dir: Path) -> tuple[Path, Path]:
    """(model folder, data folder): the tiny random GPT-Neo and 40 train + 40 test records per task."""
    from transformers import AutoTokenizer

    from conftest import tiny_model

    model_dir, small = work / "tiny_neo", work / "data"
    tiny_model("gpt_neo").save_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(model_dir))
    for task in TASKS:
        (small / task).mkdir(parents=True)
        for split in ("train", "test"):
            records = json.loads((data_dir / task / f"{split}.json").read_text())[:40]
            (small / task / f"{split}.json").write_text(json.dumps(records))
    return model_dir, small


def run_method(method: str, model_dir: Path, data: Path, out: Path) -> dict:
    import train_knowhira

    train = ["--model_name", str(model_dir), "--data_dir", str(data), "--dataset", "mix:boolq,openbookqa",
             "--peft_type", method, "--max_steps", "3", "--batch", "2", "--val_size", "4",
             "--eval_steps", "3", "--save_steps", "3", "--warmup", "1", "--lr", "1e-2",
             "--protocol", "clean", "--no-group_by_length", "--output_folder", str(out), "--run_name", method,
             *FLAGS.get(method, ["--r_ab", "4"])]
    assert train_knowhira.main(train) == 0, method
    log = [json.loads(line) for line in (out / method / "log.jsonl").read_text().splitlines()]
    result = {"log": [{k: r[k] for k in LOG_KEYS if k in r} for r in log], "eval": {}}
    for mode in ("generate", "loglik"):
        res_dir = out / f"{method}_{mode}"
        ev = ["--ckpt", str(out / method), "--data_dir", str(data), "--dataset", ",".join(TASKS),
              "--max_examples", "4", "--eval_mode", mode, "--max_new_tokens", "6",
              "--results_dir", str(res_dir)]
        assert train_knowhira.main(ev) == 0, (method, mode)
        for task in TASKS:
            rows = [json.loads(line) for line in (res_dir / "eval" / f"{task}.jsonl").read_text().splitlines()]
            result["eval"][f"{mode}/{task}"] = [
                {k: row[k] for k in ("id", "prediction", "scores", "extracted") if k in row} for row in rows]
    return result


def record(work: Path, data_dir: Path, tokenizer_dir: Path, methods=METHODS) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_dir, data = make_inputs(work, data_dir, tokenizer_dir)
        return {m: run_method(m, model_dir, data, work / "runs") for m in methods}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        got = record(Path(tmp), Path(os.environ["KNOWHIRA_DATA_DIR"]), Path(os.environ["KNOWHIRA_TOKENIZER_DIR"]))
    Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[1]).write_text(json.dumps(got, indent=1) + "\n")
