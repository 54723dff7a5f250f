"""Data loading, validation split, tokenisation and collation, on the real LLM-Adapters files and
the real GPT-2 tokenizer; tasks missing from the shared folder are covered by small fixtures."""
import json
import re

import pytest
import torch

from data.commonsense import (
    DataError,
    load_records,
    load_task_split,
    load_train_data,
    split_validation,
    task_file,
)
from data.prompt import encode_prompt, encode_response, generate_prompt
from data.tasks import ANSWER_WORDS, TASKS
from data.tokenize import IGNORE_INDEX, Collator, adds_bos, tokenize_record

MIX4 = "mix:boolq,ARC-Easy,ARC-Challenge,openbookqa"
TRAIN_SIZES = {"boolq": 9427, "ARC-Easy": 2251, "ARC-Challenge": 1119, "openbookqa": 4957}


def write_json(path, obj):
    """Write `obj` as JSON to `path` (creating folders); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def rec(instruction, answer):
    """A record in the LLM-Adapters layout."""
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mix4(data_dir):
    return load_train_data(data_dir, MIX4)


def test_load_boolq_train(data_dir):
    records = load_train_data(data_dir, "boolq")
    assert len(records) == 9427
    assert all(r["task"] == "boolq" for r in records)
    assert records[0]["instruction"].startswith("Please answer the following question with true or false")
    # output and answer agree and use the task's answer words
    for r in records:
        assert r["answer"] in ANSWER_WORDS["boolq"]
        assert r["output"] == f"the correct answer is {r['answer']}"
        assert r["input"] == ""


def test_load_mix_counts_and_tags(mix4):
    assert len(mix4) == 9427 + 2251 + 1119 + 4957 == 17754
    # concatenated in the given order, each block tagged with its canonical task name
    start = 0
    for task, n in TRAIN_SIZES.items():
        block = mix4[start:start + n]
        assert {r["task"] for r in block} == {task}
        assert all(r["answer"] in ANSWER_WORDS[task] for r in block)
        start += n


def test_mix_aliases_and_case(data_dir):
    records = load_train_data(data_dir, "mix: OBQA , arc-c")
    assert len(records) == 4957 + 1119
    assert records[0]["task"] == "openbookqa" and records[-1]["task"] == "ARC-Challenge"


def test_load_test_split_and_task_file(data_dir):
    assert task_file(data_dir, "arc_easy", "test") == data_dir / "ARC-Easy" / "test.json"
    piqa = load_task_split(data_dir, "piqa", "test")
    assert len(piqa) == 1838
    assert {r["answer"] for r in piqa} == {"solution1", "solution2"}


def test_split_validation(mix4):
    train, val = split_validation(mix4, n_val=120, seed=42)
    assert len(val) == 120 and len(train) == 17754 - 120
    assert {id(r) for r in train}.isdisjoint({id(r) for r in val})
    # deterministic across calls
    train2, val2 = split_validation(mix4, n_val=120, seed=42)
    assert [id(r) for r in val] == [id(r) for r in val2]
    assert [id(r) for r in train] == [id(r) for r in train2]
    # another seed, another split
    _, val3 = split_validation(mix4, n_val=120, seed=43)
    assert {id(r) for r in val3} != {id(r) for r in val}
    # training records keep their original order
    pos = {id(r): i for i, r in enumerate(mix4)}
    assert [pos[id(r)] for r in train] == sorted(pos[id(r)] for r in train)


def test_split_validation_edges():
    records = [{"i": i} for i in range(10)]
    train, val = split_validation(records, n_val=0)
    assert val == [] and train == records
    train, val = split_validation(records, n_val=9)
    assert len(train) == 1 and len(val) == 9
    with pytest.raises(DataError, match="n_val=10"):
        split_validation(records, n_val=10)
    with pytest.raises(DataError):
        split_validation(records, n_val=-1)


# ---------------------------------------------------------------- tokenisation (GPT-2)


def test_tokenize_real_record(gpt2_tokenizer, data_dir):
    tok = gpt2_tokenizer
    record = load_task_split(data_dir, "ARC-Challenge", "train")[0]
    prompt_ids = encode_prompt(tok, generate_prompt(record["instruction"], record["input"]))
    resp_ids = encode_response(tok, record["output"])
    assert not adds_bos(tok)

    out = tokenize_record(tok, record, cutoff_len=256, train_on_inputs=False)
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels) == len(prompt_ids) + len(resp_ids) <= 256
    assert ids[-1] == tok.eos_token_id == 50256
    n_prompt = len(prompt_ids)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels.count(IGNORE_INDEX) == n_prompt
    assert labels[n_prompt:] == resp_ids == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:-1]) == record["output"]

    full = tokenize_record(tok, record, cutoff_len=256, train_on_inputs=True)
    assert full["labels"] == full["input_ids"] == ids


def test_tokenize_known_ids(gpt2_tokenizer):
    # "the correct answer is true" + EOS in GPT-2 BPE, no leading space after "Response:\n"
    out = tokenize_record(gpt2_tokenizer, rec("Is it? Answer format: true/false", "true"), 256, False)
    assert out["input_ids"][-6:] == [1169, 3376, 3280, 318, 2081, 50256]
    assert out["labels"][-6:] == [1169, 3376, 3280, 318, 2081, 50256]
    assert out["labels"][-7] == IGNORE_INDEX


def test_truncation_keeps_response_gpt2(gpt2_tokenizer):
    tok = gpt2_tokenizer
    record = rec("Please answer the question: " + "very " * 400 + "long?\n\nAnswer format: answer1/answer2", "answer2")
    prompt_ids = encode_prompt(tok, generate_prompt(record["instruction"]))
    resp_ids = encode_response(tok, record["output"])
    assert len(prompt_ids) > 400

    out = tokenize_record(tok, record, cutoff_len=64, train_on_inputs=False)
    ids = out["input_ids"]
    assert len(ids) == 64
    assert ids[-len(resp_ids):] == resp_ids  # response intact
    n_prompt = 64 - len(resp_ids)
    assert ids[:n_prompt] == prompt_ids[-n_prompt:]  # prompt cut from the LEFT
    assert out["labels"].count(IGNORE_INDEX) == n_prompt
    assert tok.decode(ids[:n_prompt]).endswith("### Response:\n")


def test_response_longer_than_cutoff(gpt2_tokenizer):
    record = rec("Short question?", "answer1")
    n_resp = len(encode_response(gpt2_tokenizer, record["output"]))
    assert n_resp == 7
    assert len(tokenize_record(gpt2_tokenizer, record, cutoff_len=7, train_on_inputs=False)["input_ids"]) == 7  # exactly fits
    with pytest.raises(DataError, match="cutoff_len=6"):
        tokenize_record(gpt2_tokenizer, record, cutoff_len=6, train_on_inputs=False)


# ---------------------------------------------------------------- tokenisation (Llama-style BOS)


@pytest.fixture(scope="module")
def bos_tokenizer():
    """An offline word-level tokenizer that, like Llama's, prepends <s> to every encoded text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    text = generate_prompt("x") + generate_prompt("x", "y") + " the correct answer is answer1 answer2 very long ?"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    pre = pre_tokenizers.Whitespace()
    for word, _ in pre.pre_tokenize_str(text):
        vocab.setdefault(word, len(vocab))
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre
    model.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_bos_kept_when_truncating(bos_tokenizer):
    tok = bos_tokenizer
    assert adds_bos(tok) and tok.bos_token_id == 1 and tok.eos_token_id == 2
    record = rec("very " * 100 + "long ?", "answer2")
    prompt_ids = encode_prompt(tok, generate_prompt(record["instruction"]))
    resp_ids = encode_response(tok, record["output"])
    assert prompt_ids[0] == 1 and len(resp_ids) == 6

    untruncated = tokenize_record(tok, record, cutoff_len=1000, train_on_inputs=False)["input_ids"]
    assert untruncated == prompt_ids + resp_ids and untruncated.count(1) == 1

    out = tokenize_record(tok, record, cutoff_len=20, train_on_inputs=False)
    ids = out["input_ids"]
    assert len(ids) == 20
    assert ids[0] == 1 and ids.count(1) == 1  # BOS kept, once
    assert ids[-6:] == resp_ids and ids[-1] == 2
    assert ids[1:14] == prompt_ids[-13:]  # the rest of the prompt is its tail
    assert out["labels"] == [IGNORE_INDEX] * 14 + resp_ids

    # BOS + response fit exactly; one token less does not
    assert len(tokenize_record(tok, record, cutoff_len=7, train_on_inputs=False)["input_ids"]) == 7
    assert tokenize_record(tok, record, cutoff_len=7, train_on_inputs=False)["input_ids"] == [1] + resp_ids
    with pytest.raises(DataError, match="BOS"):
        tokenize_record(tok, record, cutoff_len=6, train_on_inputs=False)


def test_collator_falls_back_to_eos(bos_tokenizer):
    assert bos_tokenizer.pad_token_id is None
    batch = Collator(bos_tokenizer)([{"input_ids": [1, 5], "labels": [-100, 5]}, {"input_ids": [1], "labels": [-100]}])
    assert batch["input_ids"].tolist() == [[1, 5], [1, 2]]


# ---------------------------------------------------------------- collation


def test_collator(gpt2_tokenizer):
    feats = [
        {"input_ids": [10, 11, 12], "labels": [-100, 11, 12]},
        {"input_ids": [20], "labels": [20]},
        {"input_ids": [30, 31, 32, 33, 34], "labels": [-100, -100, 32, 33, 34]},
    ]
    batch = Collator(gpt2_tokenizer)(feats)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for t in batch.values():
        assert t.shape == (3, 5) and t.dtype == torch.long
    pad = 50256
    assert batch["input_ids"].tolist() == [[10, 11, 12, pad, pad], [20, pad, pad, pad, pad], [30, 31, 32, 33, 34]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, -100], [20, -100, -100, -100, -100],
                                        [-100, -100, 32, 33, 34]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]

    padded = Collator(gpt2_tokenizer, pad_to_multiple_of=8)(feats)
    assert padded["input_ids"].shape == (3, 8)
    assert padded["attention_mask"].sum().item() == 9


def test_collator_on_real_records(gpt2_tokenizer, data_dir):
    records = load_task_split(data_dir, "openbookqa", "train")[:4]
    feats = [tokenize_record(gpt2_tokenizer, r, 256, False) for r in records]
    batch = Collator(gpt2_tokenizer)(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    # the loss covers exactly the response tokens ("the correct answer is answerN" + EOS = 7 tokens)
    assert (batch["labels"] != IGNORE_INDEX).sum(1).tolist() == [7, 7, 7, 7]


# ---------------------------------------------------------------- bad inputs


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"instruction": "q", "output": "a"},\n {"instruction": }]')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 2 column"):
        load_records(path)


@pytest.mark.parametrize("content, message", [
    ({"instruction": "q", "output": "a"}, "top level is a JSON dict"),
    ([], "empty list"),
    ([rec("q", "true"), "just a string"], "record 1 is a str"),
    ([rec("q", "true"), rec("q", "false"), {"input": "", "output": "a"}], "record 2 has no non-empty string field 'instruction'"),
    ([{"instruction": "  ", "output": "a"}], "record 0 has no non-empty string field 'instruction'"),
    ([rec("q", "true"), {"instruction": "q", "answer": "true"}], "record 1 has no string field 'output'"),
    ([{"instruction": "q", "output": "a", "input": 3}], "record 0 field 'input'"),
])
def test_bad_records(tmp_path, content, message):
    path = write_json(tmp_path / "train.json", content)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_input_missing_or_null_becomes_empty(tmp_path):
    path = write_json(tmp_path / "t.json", [{"instruction": "q", "output": "a"}, {"instruction": "q", "input": None, "output": "b"}])
    assert [r["input"] for r in load_records(path)] == ["", ""]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.json: file not found"):
        load_records(tmp_path / "nope.json")


def test_an_empty_file_a_folder_and_a_link_loop_say_what_they_are(tmp_path):
    """Issue 32 (fair): not json's "Expecting value" for 0 bytes, nor "not found" for what is there."""
    (tmp_path / "empty.json").write_bytes(b"")
    (tmp_path / "train.json").mkdir()
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    (tmp_path / "dangling.json").symlink_to(tmp_path / "gone.json")
    for name, message in (("empty.json", "empty file (0 bytes"), ("train.json", "a folder, not a file"),
                          ("loop.json", "a symbolic link that leads to no file (Too many levels"),
                          ("dangling.json", "a symbolic link that leads to no file (No such file")):
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}: {message}")):
            load_records(tmp_path / name)
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'boolq' / 'test.json'}: a folder, not a file")):
        load_task_split(tmp_path, "boolq", "test")


def test_unknown_task(data_dir):
    with pytest.raises(ValueError) as err:
        load_task_split(data_dir, "hellaswagg", "test")
    assert "hellaswagg" in str(err.value) and all(t in str(err.value) for t in TASKS)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        task_file(data_dir, "boolq", "dev")


def test_nonexistent_data_dir(tmp_path):
    missing = tmp_path / "no_such_dir"
    for call in (lambda: load_task_split(missing, "boolq", "test"), lambda: load_train_data(missing, "boolq"),
                 lambda: load_train_data(missing, "common_170k")):
        with pytest.raises(DataError, match="no_such_dir does not exist"):
            call()


def test_missing_split_file(data_dir):
    # piqa has no train split in the shared folder
    with pytest.raises(DataError) as err:
        load_train_data(data_dir, "piqa")
    assert str(data_dir / "piqa" / "train.json") in str(err.value)
    with pytest.raises(DataError, match="commonsense_170k.json: file not found"):
        load_train_data(data_dir, "common_170k")  # not in the shared folder


@pytest.mark.parametrize("spec", ["common170k", "boolq,piqa", "mix:", "mix:boolq,,piqa", "mix:boolq,nope"])
def test_bad_dataset_spec(data_dir, spec):
    with pytest.raises(DataError) as err:
        load_train_data(data_dir, spec)
    assert spec in str(err.value)
    if not spec.startswith("mix:"):
        assert "common_170k" in str(err.value) and "mix:TASK,TASK" in str(err.value)


def test_duplicate_task_in_mix(data_dir):
    with pytest.raises(DataError, match="'boolq' appears more than once"):
        load_train_data(data_dir, "mix:boolq,ARC-Easy,BoolQ")
    with pytest.raises(DataError, match="'ARC-Easy' appears more than once"):
        load_train_data(data_dir, "mix:arc-e,ARC-Easy")  # alias and name are the same task


# ---------------------------------------------------------------- tasks absent from the shared folder

HELLASWAG = [
    rec("Please choose the correct ending to complete the given sentence: Removing ice from car: Then, the man "
        "writes over the snow covering the window of a car, and a woman wearing winter clothes smiles. then\n\n"
        "Ending1: , the man adds wax to the windshield and cuts it. Ending2: , a person board a ski lift, while two "
        "men supporting the head of the person wearing winter clothes snow as the we girls sled. Ending3: , the man "
        "puts on a christmas coat, knitted with netting. Ending4: , the man continues removing the snow on his car."
        "\n\nAnswer format: ending1/ending2/ending3/ending4", "ending4"),
    rec("Please choose the correct ending to complete the given sentence: Baking cookies: A female chef in white "
        "uniform shows a stack of baking pans in a large kitchen presenting them. the pans\n\nEnding1: contain "
        "egg yolks and baking soda. Ending2: are then sprinkled with brown sugar. Ending3: are placed in a strainer "
        "on the counter. Ending4: are filled with pastries and loaded into the oven.\n\n"
        "Answer format: ending1/ending2/ending3/ending4", "ending4"),
]
WINOGRANDE = [
    rec("Please choose the correct answer to fill in the blank to complete the given sentence: Sarah was a much "
        "better surgeon than Maria so _ always got the harder cases.\n\nOption1: Sarah Option2: Maria\n\n"
        "Answer format: option1/option2", "option1"),
    rec("Please choose the correct answer to fill in the blank to complete the given sentence: The trophy doesn't "
        "fit into the brown suitcase because the _ is too small.\n\nOption1: trophy Option2: suitcase\n\n"
        "Answer format: option1/option2", "option2"),
    rec("Please choose the correct answer to fill in the blank to complete the given sentence: Ian volunteered to "
        "eat Dennis's menudo after already having a bowl because _ despised eating intestine.\n\nOption1: Ian "
        "Option2: Dennis\n\nAnswer format: option1/option2", "option2"),
]
SOCIAL_I_QA = [
    rec("Please choose the correct answer to the question: Cameron decided to have a barbecue and gathered her "
        "friends together. How would Others feel as a result?\n\nAnswer1: like attending Answer2: like staying "
        "home Answer3: a good friend to have\n\nAnswer format: answer1/answer2/answer3", "answer1"),
    rec("Please choose the correct answer to the question: Jan needed to give out jobs for an upcoming project at "
        "work. What will Others want to do next?\n\nAnswer1: disagree with Jan Answer2: get to work Answer3: "
        "argue with the assignments\n\nAnswer format: answer1/answer2/answer3", "answer2"),
]


@pytest.fixture
def fixture_dir(tmp_path):
    """A data folder with the hellaswag / winogrande / social_i_qa train files and a commonsense_170k.json."""
    write_json(tmp_path / "hellaswag" / "train.json", HELLASWAG)
    write_json(tmp_path / "winogrande" / "train.json", WINOGRANDE)
    write_json(tmp_path / "social_i_qa" / "train.json", SOCIAL_I_QA)
    write_json(tmp_path / "commonsense_170k.json", WINOGRANDE + HELLASWAG + SOCIAL_I_QA)
    return tmp_path


def test_common_170k_fixture(fixture_dir):
    records = load_train_data(fixture_dir, " common_170k ")
    assert len(records) == 7
    assert [r["answer"] for r in records] == ["option1", "option2", "option2", "ending4", "ending4", "answer1", "answer2"]
    assert all("task" not in r for r in records)


def test_mix_of_fixture_tasks(fixture_dir, gpt2_tokenizer):
    records = load_train_data(fixture_dir, "mix:winogrande,siqa,HellaSwag")
    assert [r["task"] for r in records] == ["winogrande"] * 3 + ["social_i_qa"] * 2 + ["hellaswag"] * 2
    for r in records:
        assert r["answer"] in ANSWER_WORDS[r["task"]]
        out = tokenize_record(gpt2_tokenizer, r, 256, False)
        assert out["input_ids"][-1] == gpt2_tokenizer.eos_token_id
    train, val = split_validation(records, n_val=2, seed=0)
    assert len(train) == 5 and len(val) == 2


# ---------------------------------------------------------------- download helper (no network)


def test_download_file_validates_and_replaces_atomically(tmp_path):
    from data.download import DownloadError, download_file

    good = write_json(tmp_path / "src" / "good.json", WINOGRANDE)
    bad = write_json(tmp_path / "src" / "bad.json", {"not": "a list"})
    dest = tmp_path / "out" / "winogrande" / "train.json"

    assert download_file(good.as_uri(), dest) == 3
    assert load_records(dest) == load_records(good)

    before = dest.read_bytes()
    with pytest.raises(DownloadError, match="bad.json is not a valid LLM-Adapters data file"):
        download_file(bad.as_uri(), dest)
    assert dest.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in dest.parent.iterdir()) == ["train.json"]  # no temp file left behind


def test_a_failed_download_leaves_no_empty_folders(tmp_path):
    """Issue 32 (fair): `python -m data.download` offline left --out and its task folder behind, empty."""
    import urllib.error

    from data.download import download_file

    def offline(url):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    (tmp_path / "kept").mkdir()
    with pytest.raises(urllib.error.URLError):
        download_file("https://example.invalid/x.json", tmp_path / "kept" / "out" / "boolq" / "test.json", offline)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]  # the folder that was there stays


def test_download_plan(tmp_path):
    from data.download import BASE_URL, plan

    jobs = plan(tmp_path, ["piqa"], with_170k=True)
    assert jobs == [
        (f"{BASE_URL}/dataset/piqa/test.json", tmp_path / "piqa" / "test.json", True),
        (f"{BASE_URL}/dataset/piqa/train.json", tmp_path / "piqa" / "train.json", False),
        (f"{BASE_URL}/ft-training_set/commonsense_170k.json", tmp_path / "commonsense_170k.json", True),
    ]
    assert BASE_URL == "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main"
