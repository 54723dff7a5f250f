"""The original KnowHiRA README's commands, run as written on tiny local data and a tiny RANDOM GPT-Neo:
`python download_all_eval_datasets.py --datasets ...` (data.download.fetch faked: no network),
`python analyze_results.py` (no argument: ./runs) and `bash run_fixed_evaluation.sh`."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

import analyze_results
from analysis import report
import download_all_eval_datasets
import train_knowhira
from data import download
from data.commonsense import load_records
from data.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
SHORT_NAMES = ["boolq", "piqa", "siqa", "hellas", "winog", "arce", "arcc", "obqa"]
TIMEOUT = 300


def cli_env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)


# ---------------------------------------------------------------- download_all_eval_datasets.py

@pytest.fixture
def fetched(monkeypatch):
    """Replace data.download.fetch: records every URL asked for and answers one valid record
    whose instruction is that URL; piqa's train.json is "not published" (HTTP 404)."""
    urls = []

    def fake_fetch(url, timeout=60.0):
        urls.append(url)
        if url.endswith("/piqa/train.json"):
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        response = io.BytesIO(json.dumps([{"instruction": url, "input": "", "output": "x"}]).encode())
        response.headers = {}
        return response

    monkeypatch.setattr(download, "fetch", fake_fetch)
    return urls


def urls_for(tasks):
    return [f"{download.BASE_URL}/dataset/{t}/{split}.json" for t in tasks for split in ("test", "train")]


def test_download_named_datasets(tmp_path, fetched, capsys):
    out = tmp_path / "commonsense"
    assert download_all_eval_datasets.main(["--datasets", "boolq", "piqa", "siqa", "--out", str(out)]) == 0
    assert fetched == urls_for(["boolq", "piqa", "social_i_qa"])  # eval files only: no 170k mix
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["boolq/test.json", "boolq/train.json", "piqa/test.json",
                       "social_i_qa/test.json", "social_i_qa/train.json"]
    for path in written:  # each file holds what was fetched for it
        assert load_records(out / path)[0]["instruction"] == f"{download.BASE_URL}/dataset/{path}"
    assert "skip" in capsys.readouterr().out  # piqa/train.json: 404 on an optional file


def test_download_all_and_the_short_names(tmp_path, fetched):
    assert download_all_eval_datasets.main(["--datasets", "all", "--out", str(tmp_path / "a")]) == 0
    assert len(TASKS) == 8 and fetched == urls_for(TASKS)
    fetched.clear()
    assert download_all_eval_datasets.main(["--datasets", *SHORT_NAMES, "--out", str(tmp_path / "b")]) == 0
    assert fetched == urls_for(TASKS)  # hellas -> hellaswag, winog -> winogrande, ... in task order
    fetched.clear()
    assert download_all_eval_datasets.main(["--datasets", "obqa", "--with-170k", "--out", str(tmp_path / "c")]) == 0
    assert fetched == [*urls_for(["openbookqa"]), f"{download.BASE_URL}/ft-training_set/commonsense_170k.json"]


def test_download_unknown_dataset_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "download_all_eval_datasets.py"), "--datasets",
                           "boolq", "hellaswagg", "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown task 'hellaswagg'" in proc.stderr
    assert not (tmp_path / "out").exists()  # failed before fetching anything


# ------------------------------------------------------- a tiny trained and evaluated run

@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_neo_dir, small_data_dir, data_dir, single_thread):
    """work/runs/tiny: KnowHiRA on a tiny random GPT-Neo, 2 steps on boolq, evaluated on 4 boolq
    test examples; work/data: the 40-record train files plus the first 8 test records of boolq
    and openbookqa (the other six tasks have no test file)."""
    work = tmp_path_factory.mktemp("legacy")
    data = work / "data"
    shutil.copytree(small_data_dir, data)
    for task in ("boolq", "openbookqa"):
        records = json.loads((data_dir / task / "test.json").read_text())[:8]
        (data / task / "test.json").write_text(json.dumps(records))
    run_dir = work / "runs" / "tiny"
    assert train_knowhira.main(["--model_name", str(tiny_neo_dir), "--data_dir", str(data), "--dataset", "boolq",
                                "--max_steps", "2", "--batch", "2", "--val_size", "4", "--cutoff_len", "128",
                                "--r_ab", "4", "--output_folder", str(work / "runs"), "--run_name", "tiny"]) == 0
    assert train_knowhira.main(["--ckpt", str(run_dir), "--data_dir", str(data), "--dataset", "boolq",
                                "--max_examples", "4", "--max_new_tokens", "4"]) == 0
    return {"work": work, "data": data, "dir": run_dir}


# ------------------------------------------------------------------------ analyze_results.py

def test_analyze_results_without_arguments_reads_runs(run, tiny_neo_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "analyze_results.py")], cwd=run["work"],
                          env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    args = json.loads((run["dir"] / "args.json").read_text())
    results = json.loads((run["dir"] / "results.json").read_text())
    with open(run["work"] / "runs" / "summary" / "summary.csv", newline="") as handle:  # default --out
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    row = rows[str(run["dir"].resolve())]
    assert row["method"] == "knowhira" == args["peft_type"]
    assert row["model"] == tiny_neo_dir.name
    assert int(row["trainable_params"]) == args["trainable_params"] > 0
    assert (row["r_ab"], float(row["lr"]), float(row["epoch"]), row["max_steps"]) == ("4", args["lr"], args["epoch"], "2")
    for task, result in results["tasks"].items():
        assert float(row[f"{task}_accuracy"]) == result["accuracy"]
        assert int(row[f"{task}_n"]) == result["n"]
    table_row = next(line for line in proc.stdout.splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in table_row.strip("|").split("|")]
    assert cells[1:4] == ["knowhira", "hira", tiny_neo_dir.name]  # method, protocol (the default), model
    assert cells[5] == report._format_count(args["trainable_params"])


def test_analyze_results_without_a_runs_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert analyze_results.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs: no such file or folder" in err


# --------------------------------------------------------------------- run_fixed_evaluation.sh

def test_run_fixed_evaluation_evaluates_the_newest_run(run):
    decoy = run["work"] / "runs" / "zzz_older"  # last by name, but its args.json is the oldest
    decoy.mkdir()
    shutil.copy(run["dir"] / "args.json", decoy / "args.json")
    os.utime(decoy / "args.json", (1, 1))
    proc = subprocess.run(["bash", str(ROOT / "run_fixed_evaluation.sh")], cwd=run["work"],
                          env=cli_env(RUNS_DIR=str(run["work"] / "runs"), KNOWHIRA_DATA_DIR=str(run["data"]),
                                      MAX_EXAMPLES="2", PY=sys.executable),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((run["dir"] / "results.json").read_text())
    assert sorted(results["tasks"]) == ["boolq", "openbookqa"]  # --dataset all: the tasks with a test file
    for result in results["tasks"].values():
        assert (result["mode"], result["n"], result["beam_size"], result["max_new_tokens"]) == ("generate", 2, 1, 32)
    assert results["meta"]["max_examples"] == 2
    summary = (run["dir"] / "summary" / "summary.md").read_text()
    assert "| tiny | knowhira |" in summary and "openbookqa" in summary
    assert not (decoy / "results.json").exists()


@pytest.mark.parametrize("argv, message", [([], "no run (no args.json) under"),
                                            (["{empty}"], "has no args.json (not a run folder)")])
def test_run_fixed_evaluation_without_a_run(tmp_path, argv, message):
    empty = tmp_path / "runs"
    empty.mkdir()
    proc = subprocess.run(["bash", str(ROOT / "run_fixed_evaluation.sh"), *[a.format(empty=empty) for a in argv]],
                          env=cli_env(RUNS_DIR=str(empty)), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
