"""Tests for the eval package and analyze_results.py (tiny random models: structure, not quality)."""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_model
from data.prompt import encode_prompt, generate_prompt
from data.tasks import ANSWER_WORDS
from data.choices import offered_choices
from eval.evaluate import evaluate_task, select_ids, update_results_json
from data.protocols import get_protocol
from data.protocols import word_extract as extract_answer
from eval.generate import generate_answers
from eval.loglik import candidate_response, loglik_predict, score_candidates
from eval.metrics import chance_accuracy, majority_accuracy, wilson_interval
from utils.batching import pad, pad_token_id

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_test(data_dir, task):
    with open(data_dir / task / "test.json", encoding="utf-8") as handle:
        return json.load(handle)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def mixed_prompts(data_dir):
    """10 real prompts of clearly different lengths (boolq + ARC-Easy)."""
    boolq, arc = load_test(data_dir, "boolq"), load_test(data_dir, "ARC-Easy")
    records = boolq[:5] + arc[:5]
    return [generate_prompt(r["instruction"], r["input"]) for r in records]


@pytest.fixture(scope="module", params=["gpt_neo", "llama"])
def model(request):
    return tiny_model(request.param, seed=0)


# ------------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("task", list(ANSWER_WORDS))
def test_extract_each_vocabulary(task):
    words = ANSWER_WORDS[task]
    first, second = words[1], words[0]
    assert extract_answer(f"the correct answer is {first}", task) == first
    # several candidates: the leftmost wins
    assert extract_answer(f"{first}, not {second}", task) == first
    assert extract_answer(f"{second} ... or {first}", task) == second
    # upper / mixed case -> canonical lowercase
    assert extract_answer(f"The correct answer is {first.upper()}.", task) == first
    assert extract_answer(f"({first.capitalize()})", task) == first
    # no candidate
    assert extract_answer("I do not know", task) is None
    assert extract_answer("", task) is None
    # boundaries: no match inside a longer word
    assert extract_answer(f"{first}9 x{first} {first}_", task) is None
    assert extract_answer(f"un{first} then {second}!", task) == second


def test_extract_boundary_cases():
    assert extract_answer("Answer2", "ARC-Easy") == "answer2"
    assert extract_answer("answer12 then answer3", "ARC-Easy") == "answer3"
    assert extract_answer("untrue", "boolq") is None
    assert extract_answer("trueness falsehood", "boolq") is None
    assert extract_answer("the correct answer is true.</s>", "boolq") == "true"
    assert extract_answer("answer5", "openbookqa") is None  # not in openbookqa's vocabulary
    assert extract_answer("answer5", "arc-c") == "answer5"  # alias accepted
    assert extract_answer("solution1\nsolution2", "piqa") == "solution1"


# -------------------------------------------------------------------------------- metrics

def test_wilson_known_values_and_edges():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson_interval(81, 100)
    assert lo == pytest.approx(0.7222, abs=1e-4) and hi == pytest.approx(0.8749, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def _arc_record(n_choices, answer="answer1"):
    words = "/".join(f"answer{i}" for i in range(1, n_choices + 1))
    return {"instruction": f"Question?\n\nAnswer format: {words}", "input": "",
            "output": f"the correct answer is {answer}", "answer": answer}


def test_choices_and_chance_accuracy():
    assert offered_choices(_arc_record(3)["instruction"], "ARC-Easy") == [
        "answer1", "answer2", "answer3"]
    assert offered_choices("no format line", "ARC-Easy") == ANSWER_WORDS["ARC-Easy"]
    records = [_arc_record(4), _arc_record(4), _arc_record(5)]
    assert chance_accuracy("ARC-Challenge", records) == pytest.approx((0.25 + 0.25 + 0.2) / 3)
    # no format line -> vocabulary size
    assert chance_accuracy("boolq", [{"instruction": "q", "answer": "true"}]) == 0.5


def test_chance_and_majority_on_real_data(data_dir):
    arc = load_test(data_dir, "ARC-Easy")
    chance = chance_accuracy("ARC-Easy", arc)
    assert 0.2 < chance < 0.34 and chance != pytest.approx(0.25)  # mixes 3/4/5-choice questions
    boolq = load_test(data_dir, "boolq")
    n_true = sum(r["answer"] == "true" for r in boolq)
    assert majority_accuracy(boolq) == pytest.approx(max(n_true, len(boolq) - n_true) / len(boolq))


def test_majority_accuracy():
    records = [{"answer": a} for a in ["answer1", "answer2", "answer2", "answer3"]]
    assert majority_accuracy(records) == 0.5


# ------------------------------------------------------------------- generation and scoring

def test_left_pad():
    # eval.generate.left_pad became utils.batching.pad(seqs, pad_id, "left"): the one padding helper
    ids, mask = pad([[5, 6, 7], [8]], 0, "left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    # right padding (loglik scoring, the collator) and an explicit width
    ids, mask = pad([[5, 6, 7], [8]], 9, "right", width=4)
    assert ids.tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="side"):
        pad([[1]], 0, "middle")


def test_pad_token_id_falls_back_to_eos():
    class Tok:
        def __init__(self, pad_id, eos_id):
            self.pad_token_id, self.eos_token_id = pad_id, eos_id

    assert pad_token_id(Tok(3, 7)) == 3
    assert pad_token_id(Tok(None, 7)) == 7
    with pytest.raises(ValueError, match="neither a pad nor an EOS"):
        pad_token_id(Tok(None, None))


def test_generate_batch_invariance(model, gpt2_tokenizer, mixed_prompts):
    side = gpt2_tokenizer.padding_side
    one = generate_answers(model, gpt2_tokenizer, mixed_prompts, batch_size=1,
                           max_new_tokens=8, beam_size=1, show_progress=False)
    eight = generate_answers(model, gpt2_tokenizer, mixed_prompts, batch_size=8,
                             max_new_tokens=8, beam_size=1, show_progress=False)
    assert len(one) == len(mixed_prompts) and all(isinstance(t, str) for t in one)
    assert one == eight
    assert gpt2_tokenizer.padding_side == side  # tokenizer state untouched


def test_generation_ends_the_batch_when_every_sequence_has_ended(gpt2_tokenizer, mixed_prompts):
    """A model whose every next token is EOS: the batch stops after the prompt's forward, not after
    max_new_tokens (a tiny random Llama with its final norm zeroed gives all-zero logits, so greedy
    decoding picks token 0, made the EOS here)."""
    import copy

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.norm.weight.zero_()
    calls = []
    model.model.register_forward_hook(lambda module, args, out: calls.append(1))
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(0)
    texts = generate_answers(model, tokenizer, mixed_prompts[:8], batch_size=8, max_new_tokens=32, beam_size=1,
                             show_progress=False)
    assert len(texts) == 8 and len(calls) == 1  # one forward: the prompt, whose next token is EOS


def test_loglik_batch_invariance(model, gpt2_tokenizer, mixed_prompts):
    words = ["true", "false", "answer1"]
    one = score_candidates(model, gpt2_tokenizer, mixed_prompts, words, batch_size=1,
                           show_progress=False)
    eight = score_candidates(model, gpt2_tokenizer, mixed_prompts, words, batch_size=8,
                             show_progress=False)
    assert len(one) == len(mixed_prompts) and all(len(row) == 3 for row in one)
    for row_one, row_eight in zip(one, eight):
        assert row_eight == pytest.approx(row_one, abs=1e-4)


def test_loglik_matches_direct_computation(gpt2_tokenizer, mixed_prompts):
    model = tiny_model("gpt2", seed=1)
    prompts = mixed_prompts[::3]
    per_prompt = [["true", "false"], ["answer1", "answer2", "answer3"],
                  ["answer4"], ["true", "answer2"]]
    scores = score_candidates(model, gpt2_tokenizer, prompts, per_prompt, batch_size=4,
                              show_progress=False)
    for prompt, words, row in zip(prompts, per_prompt, scores):
        for word, score in zip(words, row):
            p = encode_prompt(gpt2_tokenizer, prompt)
            r = gpt2_tokenizer("the correct answer is " + word, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([p + r])).logits[0]
            log_probs = logits.log_softmax(-1)
            direct = sum(log_probs[len(p) - 1 + k, tok].item() for k, tok in enumerate(r))
            assert score == pytest.approx(direct, abs=1e-5)
    predicted, _ = loglik_predict(model, gpt2_tokenizer, prompts, per_prompt, batch_size=4, show_progress=False)
    for words, row, pick in zip(per_prompt, scores, predicted):
        assert pick == words[row.index(max(row))]
    assert candidate_response("true") == "the correct answer is true"


# ------------------------------------------------------------------------------- evaluate

def test_select_ids_is_seeded_subset_in_file_order():
    a = select_ids(100, 12, seed=42)
    assert a == sorted(a) and len(set(a)) == 12 and a == select_ids(100, 12, seed=42)
    assert a != select_ids(100, 12, seed=43)
    assert select_ids(5, None, 0) == [0, 1, 2, 3, 4] == select_ids(5, 50, 0)


# the clean protocol (greedy) and no progress bar: what these tests were written against
CLEAN = {"protocol": get_protocol("clean"), "beam_size": 1, "show_progress": False, "answer_format": "label"}


@pytest.mark.parametrize("mode", ["generate", "loglik"])
def test_evaluate_task_end_to_end(mode, data_dir, gpt2_tokenizer, tmp_path):
    records = load_test(data_dir, "ARC-Easy")
    model = tiny_model("gpt_neo", seed=0)
    result = evaluate_task(model, gpt2_tokenizer, records, "arc-e", tmp_path, mode=mode,
                           batch_size=4, max_new_tokens=6, max_examples=12, seed=42, **CLEAN)
    assert result["task"] == "ARC-Easy" and result["mode"] == mode
    assert result["n"] == 12 and result["max_examples"] == 12
    assert result["accuracy"] == result["correct"] / 12
    assert result["ci95_low"] <= result["accuracy"] <= result["ci95_high"]
    assert result["parse_failure_rate"] == result["parse_failures"] / 12
    assert 0 < result["chance_accuracy"] <= 1 / 3 and 0 < result["majority_accuracy"] <= 1
    assert result["examples_per_s"] > 0 and result["batch_size"] == 4

    lines = (tmp_path / "eval" / "ARC-Easy.jsonl").read_text().splitlines()
    assert len(lines) == 12
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == select_ids(len(records), 12, 42)
    assert sum(r["correct"] for r in rows) == result["correct"]
    for row in rows:
        assert row["gold"] == records[row["id"]]["answer"]
        assert row["correct"] == (row["extracted"] == row["gold"])
        if mode == "generate":
            assert row["extracted"] == extract_answer(row["prediction"], "ARC-Easy")
        else:
            assert len(row["scores"]) == len(row["choices"]) >= 3
            assert row["extracted"] in row["choices"]
    assert not list((tmp_path / "eval").glob("*.tmp"))

    merged = update_results_json(tmp_path, result, {"method": "hira", "model_name": "tiny"})
    update_results_json(tmp_path, {**result, "task": "boolq"}, {"seed": 42})
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert merged["tasks"]["ARC-Easy"]["n"] == 12
    assert set(on_disk["tasks"]) == {"ARC-Easy", "boolq"}
    assert on_disk["meta"] == {"method": "hira", "model_name": "tiny", "seed": 42}


def _distributed_worker(rank, world_size, store, data_dir, tokenizer_dir, out_dir):
    """One rank of test_evaluate_distributed_matches_single_process (a spawned process)."""
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}",
                                         rank=rank, world_size=world_size)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.pad_token = tokenizer.eos_token
        records = load_test(data_dir, "ARC-Challenge")
        result = evaluate_task(tiny_model("gpt2", seed=3), tokenizer, records, "ARC-Challenge",
                               out_dir, batch_size=3, max_new_tokens=4, max_examples=10, seed=42, mode="generate",
                               rank=rank, world_size=world_size, **CLEAN)
        (out_dir / f"result{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def test_evaluate_distributed_matches_single_process(data_dir, gpt2_tokenizer, tmp_path):
    import os

    import torch.multiprocessing as mp

    dist_dir, single_dir = tmp_path / "dist", tmp_path / "single"
    dist_dir.mkdir()
    mp.spawn(_distributed_worker, nprocs=2, join=True,
             args=(2, str(tmp_path / "store"), data_dir, os.environ["KNOWHIRA_TOKENIZER_DIR"],
                   dist_dir))
    single = evaluate_task(tiny_model("gpt2", seed=3), gpt2_tokenizer,
                           load_test(data_dir, "ARC-Challenge"), "ARC-Challenge", single_dir,
                           batch_size=3, max_new_tokens=4, max_examples=10, seed=42, mode="generate", **CLEAN)
    ranks = [json.loads((dist_dir / f"result{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["n"] == 10 and result["correct"] == single["correct"]
    jsonl = "eval/ARC-Challenge.jsonl"
    assert (dist_dir / jsonl).read_text() == (single_dir / jsonl).read_text()


def test_evaluate_rejects_bad_gold_answer(data_dir, gpt2_tokenizer, tmp_path):
    records = [dict(r) for r in load_test(data_dir, "boolq")[:8]]
    records[5]["answer"] = "maybe"
    with pytest.raises(ValueError, match=r"boolq.*record 5.*'maybe'"):
        evaluate_task(tiny_model("gpt2"), gpt2_tokenizer, records, "boolq", tmp_path, mode="generate",
                      batch_size=8, max_new_tokens=32, max_examples=2, seed=42, **CLEAN)
    assert not (tmp_path / "eval").exists()  # failed before running anything


# ------------------------------------------------------------------------ analyze_results

def _fake_run(folder, meta, args, tasks):
    folder.mkdir(parents=True)
    results = {"meta": meta, "tasks": {}}
    for task, (correct, n, chance, majority) in tasks.items():
        lo, hi = wilson_interval(correct, n)
        results["tasks"][task] = {"task": task, "mode": "generate", "n": n, "correct": correct,
                                  "accuracy": correct / n, "ci95_low": lo, "ci95_high": hi,
                                  "parse_failures": 3, "parse_failure_rate": 3 / n,
                                  "chance_accuracy": chance, "majority_accuracy": majority}
    (folder / "results.json").write_text(json.dumps(results))
    if args is not None:
        (folder / "args.json").write_text(json.dumps(args))


def test_analyze_results(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "hira_r32", {"model_name": "EleutherAI/gpt-neo-125M"},
              {"peft_type": "knowhira", "r_ab": 32, "lr": 2e-4, "knowledge_alpha": 0.5,
               "trainable_params": 1_179_648},
              {"boolq": (2092, 3270, 0.5, 0.6217), "piqa": (1176, 1838, 0.5, 0.5049),
               "ARC-Easy": (1045, 2376, 0.2508, 0.2664)})
    _fake_run(runs / "nested" / "lora_r8", {"method": "lora", "model_name": "/models/smollm2",
                                             "trainable_params": 811_008, "lr": 3e-4,
                                             "knowledge_alpha": 0.5},
              None, {"boolq": (2000, 3270, 0.5, 0.6217), "ARC-Easy": (1100, 2376, 0.2508, 0.2664)})
    (runs / "hira_r32" / "train_summary.json").write_text(json.dumps({"best_val_loss": 0.34249}))
    out = tmp_path / "summary"
    proc = subprocess.run([sys.executable, str(ROOT / "analyze_results.py"), str(runs),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "| best val loss |" in table and "| 1.18M | 0.342 |" in table  # from train_summary.json
    assert "r_ab=32, lr=0.0002, knowledge_alpha=0.5 |" in table  # knowhira shows its α ...
    assert "knowhira" in table and "lora" in table and "smollm2" in table
    assert "avg (boolq, ARC-Easy; 2 tasks)" in table
    assert "| chance |" in table and "| majority |" in table
    assert "64.0 ± 1.6 (3270)" in table  # 2092/3270, Wilson half-width in %
    lora_row = next(line for line in table.splitlines() if "| lora |" in line)
    assert "knowledge_alpha" not in lora_row  # ... LoRA does not (the flag is saved for every run)
    assert "—" in lora_row  # no piqa for this run
    avg_lora = 100 * (2000 / 3270 + 1100 / 2376) / 2
    assert lora_row.rstrip(" |").endswith(f"{avg_lora:.1f}")
    assert (out / "summary.md").read_text().count("| lora |") == 1

    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["knowhira", "lora", "chance", "majority"]
    assert float(rows[0]["boolq_accuracy"]) == pytest.approx(2092 / 3270)
    assert float(rows[0]["best_val_loss"]) == 0.34249 and rows[1]["best_val_loss"] == ""
    assert rows[1]["piqa_accuracy"] == ""
    assert math.isclose(float(rows[1]["avg_common"]), avg_lora / 100)

    for task in ("boolq", "piqa", "ARC-Easy"):
        assert (out / f"{task}.png").read_bytes()[:8] == PNG_MAGIC


def test_analyze_results_without_results_fails(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "analyze_results.py"), str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "no results.json found" in proc.stderr
