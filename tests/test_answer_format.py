"""--answer_format text (data/answer_format.py): the response names the chosen option's text; evaluation
scores every offered option's response. Real LLM-Adapters records; tiny RANDOMLY INITIALISED models."""
import json

import pytest
import torch

from conftest import run_main, tiny_model
from data.answer_format import candidate_response, options, with_answer_format
from data.commonsense import load_task_split
from data.prompt import encode_prompt, generate_prompt
from data.protocols import get_protocol
from eval.evaluate import evaluate_task

pytestmark = pytest.mark.usefixtures("single_thread")
CLEAN = get_protocol("clean")


def test_text_response_names_the_gold_option(data_dir):
    arc = load_task_split(data_dir, "ARC-Easy", "train")[0]  # "Which factor will most likely cause ... fever?"
    assert arc["answer"] == "answer2"
    assert with_answer_format(arc, 0, "text")["output"] == \
        "the correct answer is a bacterial population in the bloodstream"
    assert with_answer_format(arc, 0, "label") is arc
    words, texts = options(arc, 0, "text")
    assert words == ["answer1", "answer2", "answer3", "answer4"]
    assert texts == ["a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
                     "several viral particles on the skin", "carbohydrates being digested in the stomach"]
    assert options(arc, 0, "label") == (words, words)
    boolq = load_task_split(data_dir, "boolq", "train")[0]  # true/false are already text
    assert with_answer_format(boolq, 0, "text")["output"] == boolq["output"] == "the correct answer is true"
    untagged = {k: v for k, v in arc.items() if k != "task"}  # a Commonsense-170K record: task inferred
    assert with_answer_format(untagged, 0, "text")["output"] == with_answer_format(arc, 0, "text")["output"]


def test_every_real_record_has_a_text_response(data_dir):
    for task in ("ARC-Easy", "ARC-Challenge", "openbookqa", "boolq"):
        for i, r in enumerate(load_task_split(data_dir, task, "train")):
            out = with_answer_format(r, i, "text")["output"]
            assert out.startswith("the correct answer is ") and len(out) > len("the correct answer is ")


def test_tokenised_text_example_puts_loss_on_the_option_text(data_dir, gpt2_tokenizer):
    arc = load_task_split(data_dir, "ARC-Easy", "train")[0]
    ex = CLEAN.train_example(gpt2_tokenizer, with_answer_format(arc, 0, "text"), 256, False)
    labelled = [t for t in ex["labels"] if t != -100]
    assert gpt2_tokenizer.decode(labelled) == \
        "the correct answer is a bacterial population in the bloodstream" + gpt2_tokenizer.eos_token


def test_unparseable_record_is_a_one_line_error_naming_it(data_dir):
    arc = load_task_split(data_dir, "ARC-Easy", "train")[0]
    broken = {**arc, "instruction": arc["instruction"].replace("Answer3:", "Answer 3:")}
    with pytest.raises(ValueError, match=r"^ARC-Easy: record 7 cannot be parsed .*no 'Answer3:'"):
        with_answer_format(broken, 7, "text")
    stranger = {"instruction": "Translate this.", "output": "x", "answer": "x"}
    with pytest.raises(ValueError, match=r"^record 3: no task's instruction opening"):
        with_answer_format(stranger, 3, "text")


def test_text_scoring_equals_each_option_scored_alone(data_dir, gpt2_tokenizer, tmp_path):
    records = load_task_split(data_dir, "ARC-Easy", "test")
    model = tiny_model("llama", seed=2)
    result = evaluate_task(model, gpt2_tokenizer, records, "ARC-Easy", tmp_path, protocol=CLEAN, mode="loglik",
                           batch_size=3, max_new_tokens=6, beam_size=1, max_examples=6, seed=1,
                           show_progress=False, answer_format="text")
    assert result["answer_format"] == "text" and result["n"] == 6
    rows = [json.loads(line) for line in (tmp_path / "eval" / "ARC-Easy.jsonl").read_text().splitlines()]
    for row in rows:
        record = records[row["id"]]
        words, texts = options(record, row["id"], "text")
        assert row["choices"] == words and row["options"] == texts
        prompt = encode_prompt(gpt2_tokenizer, generate_prompt(record["instruction"], record.get("input")))
        for text, score in zip(texts, row["scores"]):
            response = gpt2_tokenizer(candidate_response(text), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(torch.tensor([prompt + response])).logits[0].log_softmax(-1)
            alone = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(response))
            assert score == pytest.approx(alone, abs=1e-4)
        best = max(range(len(texts)), key=lambda k: (row["scores"][k], -k))
        norm = max(range(len(texts)), key=lambda k: (row["scores"][k] / len(texts[k]), -k))
        assert row["extracted"] == words[best] and row["pred_norm"] == words[norm]
        assert row["correct_norm"] == (words[norm] == record["answer"])
    assert result["accuracy_norm"] == sum(r["correct_norm"] for r in rows) / 6
    with pytest.raises(ValueError, match="scored, not generated: use --eval_mode loglik"):
        evaluate_task(model, gpt2_tokenizer, records, "ARC-Easy", tmp_path, protocol=CLEAN, mode="generate",
                      batch_size=3, max_new_tokens=6, beam_size=1, max_examples=6, seed=1,
                      show_progress=False, answer_format="text")


def test_text_run_trains_validates_and_evaluation_names_a_format_mismatch(tiny_neo_dir, arc_obqa_dir, tmp_path, capsys):
    small = arc_obqa_dir
    run = tmp_path / "runs" / "text"
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", small, "--dataset", "mix:ARC-Easy,openbookqa",
                        "--answer_format", "text", "--protocol", "clean", "--peft_type", "hira", "--r_ab", "4",
                        "--max_steps", "2", "--batch", "4", "--val_size", "6", "--eval_steps", "2",
                        "--best_metric", "val_acc", "--output_folder", run.parent, "--run_name", "text"], capsys)
    assert rc == 0, err
    assert json.loads((run / "args.json").read_text())["answer_format"] == "text"
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert last["val_acc_n"] == 6 and 0 <= last["val_acc"] <= 1 and "val_answer_loss" not in last

    rc, err = run_main(["--ckpt", run, "--data_dir", small, "--dataset", "arc-e", "--max_examples", "4",
                        "--results_dir", tmp_path / "as_trained"], capsys)  # default: the run's format, loglik
    assert rc == 0, err
    meta = json.loads((tmp_path / "as_trained" / "results.json").read_text())["meta"]
    assert (meta["answer_format"], meta["eval_mode"], meta["protocol_deviations"]) == ("text", "loglik", {})
    rc, err = run_main(["--ckpt", run, "--data_dir", small, "--dataset", "arc-e", "--max_examples", "4",
                        "--answer_format", "label", "--eval_mode", "loglik", "--results_dir", tmp_path / "other"],
                       capsys)
    assert rc == 0, err
    results = json.loads((tmp_path / "other" / "results.json").read_text())
    assert results["meta"]["protocol_deviations"] == {"trained_answer_format": "text"}
    assert results["tasks"]["ARC-Easy"]["answer_format"] == "label"
    # cloze scores the choice texts in lm-eval's own prompt: the run's text format is not inherited
    rc, err = run_main(["--ckpt", run, "--data_dir", small, "--dataset", "arc-e", "--max_examples", "4",
                        "--eval_mode", "cloze", "--results_dir", tmp_path / "cloze"], capsys)
    assert rc == 0, err
    results = json.loads((tmp_path / "cloze" / "results.json").read_text())
    assert (results["meta"]["answer_format"], results["meta"]["protocol_deviations"]) == ("cloze", {})
    assert results["tasks"]["ARC-Easy"]["mode"] == "cloze" and results["tasks"]["ARC-Easy"]["n"] == 4


def test_training_refuses_a_record_without_parseable_options(tiny_neo_dir, data_dir, tmp_path, capsys):
    records = json.loads((data_dir / "ARC-Easy" / "train.json").read_text())[:10]
    records[4]["instruction"] = records[4]["instruction"].replace("Answer2:", "Answer two:")
    (tmp_path / "ARC-Easy").mkdir()
    (tmp_path / "ARC-Easy" / "train.json").write_text(json.dumps(records))
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", tmp_path, "--dataset", "ARC-Easy",
                        "--answer_format", "text", "--max_steps", "1", "--val_size", "0",
                        "--output_folder", tmp_path / "runs", "--run_name", "bad"], capsys)
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "ARC-Easy/train.json record 4" in line and "no 'Answer2:'" in line
    assert not (tmp_path / "runs" / "bad").exists()
