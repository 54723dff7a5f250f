"""--answer_format cloze (data/cloze.py): a training example is the gold choice's lm-eval cloze request,
validation accuracy scores it as --eval_mode cloze does (acc_norm), and a run trained in it is
evaluated in it by default. Real LLM-Adapters records; tiny RANDOMLY INITIALISED models."""
import json

import pytest

from conftest import run_main, tiny_model
from data.answer_format import scored_choices, train_example
from data.cloze import cloze_requests, encode_pair
from data.commonsense import load_task_split
from data.protocols import get_protocol
from data.questions import parse_record
from utils.batching import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("single_thread")
CLEAN = get_protocol("clean")


def test_cloze_example_is_the_gold_request(data_dir, gpt2_tokenizer):
    tok = gpt2_tokenizer
    arc = load_task_split(data_dir, "ARC-Easy", "train")[0]
    ex = train_example(CLEAN, tok, arc, 0, "cloze", 256, False)
    # the text, written out: no instruction template, no option list, no EOS
    assert tok.decode(ex["input_ids"]) == ("Question: Which factor will most likely cause a person to develop a "
                                           "fever?\nAnswer: a bacterial population in the bloodstream")
    assert tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == " a bacterial population in the bloodstream"
    boolq = load_task_split(data_dir, "boolq", "train")[0]  # answer true -> " yes"
    ex = train_example(CLEAN, tok, boolq, 0, "cloze", 256, False)
    assert boolq["answer"] == "true" and tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == " yes"
    assert tok.decode(ex["input_ids"]).endswith("?\nAnswer: yes")


@pytest.mark.parametrize("task", ["ARC-Easy", "ARC-Challenge", "openbookqa", "boolq", "piqa"])
def test_cloze_tokens_equal_the_scored_request(task, data_dir, gpt2_tokenizer):
    """input_ids = context ids + gold continuation ids exactly as cloze scoring encodes them
    (encode_pair, lm-eval's _encode_pair: tests/test_cloze.py); loss only on the continuation."""
    tok = gpt2_tokenizer
    for i, r in enumerate(load_task_split(data_dir, task, "test")[:25]):  # piqa has no train file here
        item = parse_record(r, task, i)
        context, continuation = encode_pair(tok, *cloze_requests(item, task)[0][item.gold])
        ex = train_example(CLEAN, tok, r, i, "cloze", 256, False)
        assert ex["input_ids"] == context + continuation
        assert ex["labels"] == [IGNORE_INDEX] * len(context) + continuation
        assert train_example(CLEAN, tok, r, i, "cloze", 256, True)["labels"] == context + continuation
        pairs, gold, lengths = scored_choices(CLEAN, tok, r, "cloze")  # what val_acc scores
        assert gold == item.gold and pairs[gold] == (context, continuation)
        assert lengths == [len(c) for c in item.choices]


def test_cloze_example_cuts_the_context_from_the_left(data_dir, gpt2_tokenizer):
    tok = gpt2_tokenizer
    arc = load_task_split(data_dir, "ARC-Easy", "train")[0]
    full = train_example(CLEAN, tok, arc, 0, "cloze", 256, False)
    n_cont = sum(t != IGNORE_INDEX for t in full["labels"])
    cut = train_example(CLEAN, tok, arc, 0, "cloze", n_cont + 3, False)
    assert cut["input_ids"] == full["input_ids"][-(n_cont + 3):]  # GPT-2 adds no BOS: the last tokens
    assert cut["labels"][-n_cont:] == full["labels"][-n_cont:]
    assert n_cont == 6  # " a bacterial population in the bloodstream"
    with pytest.raises(ValueError, match="continuation is 6 tokens: --cutoff_len 6 leaves no room for its context"):
        train_example(CLEAN, tok, arc, 0, "cloze", n_cont, False)


def test_cloze_val_acc_equals_cloze_evaluation(data_dir, gpt2_tokenizer, tmp_path):
    """val_acc of the cloze format = acc_norm of --eval_mode cloze on the same records, and the per-task
    numbers average, weighted by their record counts, to it."""
    from accelerate import Accelerator

    from data.tokenize import Collator
    from eval.cloze import cloze_rows
    from training.validation import validate

    tok, model = gpt2_tokenizer, tiny_model("llama", seed=3)
    by_task = {t: load_task_split(data_dir, t, "train")[:n] for t, n in
               (("ARC-Easy", 7), ("openbookqa", 5), ("boolq", 4))}
    records = [r for rs in by_task.values() for r in rs]
    features = [train_example(CLEAN, tok, r, None, "cloze", 256, False) for r in records]
    choices = [scored_choices(CLEAN, tok, r, "cloze") for r in records]
    got = validate(Accelerator(cpu=True), model, features, Collator(tok), 3, choices=choices,
                   tasks=[r["task"] for r in records])
    correct = {}
    for task, rs in by_task.items():
        rows = cloze_rows(model, tok, rs, list(range(len(rs))), task, batch_size=4, show_progress=False)
        correct[task] = sum(row["correct_norm"] for row in rows)
        assert got[f"val_acc/{task}"] == pytest.approx(correct[task] / len(rs), abs=1e-12)
        assert got[f"val_acc_n/{task}"] == len(rs)
    assert got["val_acc_n"] == 16
    assert got["val_acc"] == pytest.approx(sum(correct.values()) / 16, abs=1e-12)
    weighted = sum(got[f"val_acc/{t}"] * got[f"val_acc_n/{t}"] for t in by_task) / got["val_acc_n"]
    assert weighted == pytest.approx(got["val_acc"], abs=1e-12)


def test_cloze_run_trains_logs_per_task_and_evaluates_in_cloze(tiny_neo_dir, arc_obqa_dir, tmp_path, capsys):
    small = arc_obqa_dir
    run = tmp_path / "runs" / "cloze"
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", small, "--dataset", "mix:ARC-Easy,openbookqa",
                        "--answer_format", "cloze", "--peft_type", "knowhira", "--r_ab", "4", "--max_steps", "2",
                        "--batch", "4", "--val_size", "10", "--eval_steps", "2", "--validate_at_start",
                        "--best_metric", "val_acc", "--output_folder", run.parent, "--run_name", "cloze"], capsys)
    assert rc == 0, err
    assert json.loads((run / "args.json").read_text())["answer_format"] == "cloze"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for record in (r for r in log if "val_acc" in r):  # step 0 and step 2
        tasks = [k[len("val_acc/"):] for k in record if k.startswith("val_acc/")]
        assert sorted(tasks) == ["ARC-Easy", "openbookqa"]
        assert sum(record[f"val_acc_n/{t}"] for t in tasks) == record["val_acc_n"] == 10
        assert sum(record[f"val_acc/{t}"] * record[f"val_acc_n/{t}"] for t in tasks) / 10 == \
            pytest.approx(record["val_acc"], abs=1e-12)

    rc, err = run_main(["--ckpt", run, "--data_dir", small, "--dataset", "arc-e", "--max_examples", "5",
                        "--results_dir", tmp_path / "as_trained"], capsys)  # default: cloze, as trained
    assert rc == 0, err
    results = json.loads((tmp_path / "as_trained" / "results.json").read_text())
    assert (results["meta"]["answer_format"], results["meta"]["eval_mode"]) == ("cloze", "cloze")
    assert results["meta"]["protocol_deviations"] == {}
    assert results["tasks"]["ARC-Easy"]["mode"] == "cloze" and "accuracy_norm" in results["tasks"]["ARC-Easy"]
    rc, err = run_main(["--ckpt", run, "--data_dir", small, "--dataset", "arc-e", "--eval_mode", "loglik",
                        "--results_dir", tmp_path / "loglik"], capsys)
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: --eval_mode loglik scores a response")
    assert not (tmp_path / "loglik").exists()
    rc, err = run_main(["--ckpt", run, "--data_dir", small, "--dataset", "arc-e", "--eval_mode", "loglik",
                        "--answer_format", "text", "--max_examples", "3", "--results_dir", tmp_path / "text"], capsys)
    assert rc == 0, err  # a response format named: scored in it, the trained format recorded as a deviation
    meta = json.loads((tmp_path / "text" / "results.json").read_text())["meta"]
    assert meta["protocol_deviations"] == {"trained_answer_format": "cloze"}
