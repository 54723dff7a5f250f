"""Validation accuracy: the answer slot of a training example (data.protocols.answer_slot) for every
protocol and answer vocabulary, val_acc / val_answer_loss against per-candidate forwards on a tiny
RANDOMLY INITIALISED GPT-Neo, and --best_metric val_acc choosing best/."""
import json

import pytest
import torch

from data.protocols import PROTOCOLS, answer_slot, get_protocol
from utils.batching import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def records(data_dir):
    out = []
    for task in ("boolq", "ARC-Easy", "openbookqa"):
        for r in json.loads((data_dir / task / "train.json").read_text())[:4]:
            out.append({**r, "task": task, "input": r.get("input") or ""})
    return out


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_answer_slot(protocol, records, gpt2_tokenizer):
    from data.choices import answer_words

    p, tok = get_protocol(protocol), gpt2_tokenizer
    for r in records:
        position, tokens, gold = answer_slot(p, tok, r, 256)
        words = answer_words(r)
        assert words[gold] == r["answer"] and len(tokens) == len(words) == len(set(tokens))
        ex = p.train_example(tok, r, 256, False)
        assert ex["input_ids"][position + 1] == tokens[gold]  # the gold token follows the position
        assert ex["labels"][position + 1] != IGNORE_INDEX  # and carries loss
        for w, t in zip(words, tokens):  # each word's own example has its token there, same prefix
            other = p.train_example(tok, {**r, "output": r["output"].replace(r["answer"], w)}, 256, False)
            assert other["input_ids"][:position + 1] == ex["input_ids"][:position + 1]
            assert other["input_ids"][position + 1] == t
    untagged = {k: v for k, v in records[4].items() if k != "task"}  # Commonsense-170K records: no task
    assert answer_slot(p, tok, untagged, 256) == answer_slot(p, tok, records[4], 256)
    assert answer_slot(p, tok, {**records[0], "answer": "maybe"}, 256) is None


def test_validate_against_per_candidate_forwards(records, gpt2_tokenizer):
    from accelerate import Accelerator

    from conftest import tiny_model
    from data.choices import answer_words
    from data.tokenize import Collator
    from training.validation import validate

    p, tok = get_protocol("hira"), gpt2_tokenizer
    model = tiny_model("gpt_neo")
    features = [p.train_example(tok, r, 256, False) for r in records]
    slots = [answer_slot(p, tok, r, 256) for r in records]
    slots[1] = None  # a record without a known slot is not scored
    got = validate(Accelerator(cpu=True), model, features, Collator(tok), 3, slots)
    correct, nll = 0, 0.0
    for r, slot in zip(records, slots):
        if slot is None:
            continue
        position, tokens, gold = slot
        scores = []
        for w, t in zip(answer_words(r), tokens):  # one forward per candidate, its own example, alone
            ids = p.train_example(tok, {**r, "output": r["output"].replace(r["answer"], w)}, 256, False)
            with torch.no_grad():
                logits = model(torch.tensor([ids["input_ids"][:position + 1]])).logits[0, -1]
            scores.append(torch.log_softmax(logits.double(), -1)[t].item())
        correct += max(range(len(scores)), key=scores.__getitem__) == gold
        nll -= scores[gold]
    n = len(records) - 1
    assert got["val_acc_n"] == n
    assert got["val_acc"] == pytest.approx(correct / n, abs=1e-12)
    assert got["val_answer_loss"] == pytest.approx(nll / n, rel=1e-5)
    assert 0 < got["val_loss"] < 20


def test_best_metric_val_acc_keeps_the_most_accurate(monkeypatch, tiny_neo_dir, small_data_dir, tmp_path):
    import train_knowhira
    from training import loop

    scripted = iter([{"val_loss": 1.0, "val_acc": 0.2}, {"val_loss": 0.5, "val_acc": 0.6},
                     {"val_loss": 0.2, "val_acc": 0.4}])
    best_at = {}

    def fake_validate(*a, **k):
        return next(scripted)

    monkeypatch.setattr(loop, "validate", fake_validate)
    real_save = loop.Trainer.__init__

    def spy_init(self, *a, **k):
        real_save(self, *a, **k)
        save = self.save

        def save_spy(model, folder, write):
            if folder.name == "best":
                best_at["step"] = self.step
            save(model, folder, write)
        self.save = save_spy

    monkeypatch.setattr(loop.Trainer, "__init__", spy_init)
    assert train_knowhira.main(["--model_name", str(tiny_neo_dir), "--data_dir", str(small_data_dir),
                                "--dataset", "boolq", "--r_ab", "2", "--target_modules", "q_proj",
                                "--batch", "2", "--max_steps", "3", "--eval_steps", "1", "--val_size", "4",
                                "--best_metric", "val_acc", "--output_folder", str(tmp_path),
                                "--run_name", "r"]) == 0
    assert best_at["step"] == 2  # highest val_acc, though step 3 had the lowest val_loss
    summary = json.loads((tmp_path / "r" / "train_summary.json").read_text())
    assert (summary["best_val_acc"], summary["best_val_loss"], summary["best_metric"]) == (0.6, 0.2, "val_acc")
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in log if "val_acc" in r] == [0.2, 0.6, 0.4]


def test_answer_slot_is_the_last_occurrence_and_none_where_an_example_ends(gpt2_tokenizer, records):
    """The gold word may also appear earlier in the output: the slot is its last occurrence (the answer). A
    candidate whose example ends where the examples diverge (e.g. cut by truncation) leaves no slot (it used
    to raise IndexError)."""
    from data.protocols import Protocol

    p, tok = get_protocol("clean"), gpt2_tokenizer
    boolq = next(r for r in records if r["task"] == "boolq" and r["answer"] == "true")
    echoed = {**boolq, "output": "true or not: the correct answer is true"}
    position, tokens, gold = answer_slot(p, tok, echoed, 256)
    ex = p.train_example(tok, echoed, 256, False)
    assert ex["input_ids"][position + 1] == tokens[gold] == tok(" true", add_special_tokens=False)["input_ids"][0]
    assert position + 1 == len(ex["input_ids"]) - 2  # the answer token, then EOS: not the echoed "true"

    class Cut(Protocol):  # candidate examples of different lengths: "false" ends where they diverge
        def train_example(self, tokenizer, record, cutoff_len, train_on_inputs):
            out = {"true": [1, 2, 3, 9], "false": [1, 2]}[record["output"].rsplit(" ", 1)[-1]]
            return {"input_ids": out, "labels": out}

    assert answer_slot(Cut(), tok, boolq, 256) is None
