"""The tokenised features through 🤗 datasets (data/features.py): equal to the example function called
directly for every protocol and answer format, stored as an Arrow file that a second identical run (another
process) memory-maps without tokenising, and any change of records, tokenizer or data option is a new key."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_main
from data.answer_format import ANSWER_FORMATS, train_example
from data.commonsense import DataError, load_task_split
from data.features import cache_key, tokenized
from data.protocols import PROTOCOLS, get_protocol

OPTIONS = {"protocol": "hira", "cutoff_len": 128, "train_on_inputs": False, "answer_format": "label"}


def example_of(tokenizer, options, calls=None):
    """train_example under `options` (what training/recipe.py maps), counting its calls in `calls`."""
    protocol = get_protocol(options["protocol"])

    def example(record):
        if calls is not None:
            calls.append(1)
        return train_example(protocol, tokenizer, record, None, options["answer_format"], options["cutoff_len"],
                             options["train_on_inputs"])
    return example


def mixed_records(data_dir, n=12):
    """The first n training records of each of three tasks, in task order (different answer words)."""
    return [r for task in ("boolq", "openbookqa", "ARC-Easy") for r in load_task_split(data_dir, task, "train")[:n]]


@pytest.mark.parametrize("answer_format", ANSWER_FORMATS)
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_features_equal_the_example_function_called_directly(data_dir, gpt2_tokenizer, tmp_path, protocol,
                                                             answer_format):
    records = mixed_records(data_dir)
    options = {**OPTIONS, "protocol": protocol, "answer_format": answer_format,
               "train_on_inputs": get_protocol(protocol).train_on_inputs}
    reference = [example_of(gpt2_tokenizer, options)(r) for r in records]  # today's path: one call per record
    assert len({json.dumps(f) for f in reference}) == len(records)  # the records differ: order is checked
    for cache in ("none", str(tmp_path), str(tmp_path)):  # in memory; written; read back
        calls = []
        features = tokenized(records, gpt2_tokenizer, options, example_of(gpt2_tokenizer, options, calls), cache,
                             "test")
        assert len(features) == len(records)
        assert [features[i] for i in range(len(records))] == reference
        assert list(features) == reference
    assert calls == []  # the third call read the file
    assert len(list(tmp_path.glob("features-*.arrow"))) == 1


CHILD = """
import json, os, sys
from transformers import AutoTokenizer
from data.commonsense import load_task_split
from data.answer_format import train_example
from data.features import tokenized
from data.protocols import get_protocol

OPTIONS = json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(os.environ["KNOWHIRA_TOKENIZER_DIR"])
calls, encodes = [], []
call = type(tok).__call__
type(tok).__call__ = lambda self, *a, **k: encodes.append(1) or call(self, *a, **k)
records = load_task_split(os.environ["KNOWHIRA_DATA_DIR"], "boolq", "train")[:40]

def example(record):
    calls.append(1)
    return train_example(get_protocol("hira"), tok, record, None, "label", 128, False)
features = tokenized(records, tok, OPTIONS, example, sys.argv[1], "train")
print(json.dumps({"calls": len(calls), "encodes": len(encodes), "first": features[0],
                  "files": sorted(os.listdir(sys.argv[1]))}))
"""


def test_a_second_process_reads_the_file_and_does_not_tokenise(data_dir, gpt2_tokenizer, tmp_path):
    env = dict(os.environ, KNOWHIRA_TOKENIZER_DIR=gpt2_tokenizer.name_or_path, KNOWHIRA_DATA_DIR=str(data_dir))
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), json.dumps(OPTIONS)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.splitlines()[-1]))
        if len(runs) == 1:
            (path,) = tmp_path.glob("features-*.arrow")
            stamp = path.stat().st_mtime_ns
    assert runs[0]["calls"] == 40 and runs[0]["encodes"] >= 40  # the first process tokenised every record
    assert runs[1]["calls"] == 0 and runs[1]["encodes"] == 0  # the second one neither mapped nor encoded
    assert runs[0]["files"] == runs[1]["files"] == [path.name] and path.stat().st_mtime_ns == stamp
    assert runs[1]["first"] == runs[0]["first"] == example_of(gpt2_tokenizer, OPTIONS)(
        load_task_split(data_dir, "boolq", "train")[0])


def test_a_rank_that_does_not_write_reads_the_main_file_or_tokenises_in_memory(data_dir, gpt2_tokenizer, tmp_path):
    records = load_task_split(data_dir, "boolq", "train")[:10]
    calls = []
    example = example_of(gpt2_tokenizer, OPTIONS, calls)
    assert list(tokenized(records, gpt2_tokenizer, OPTIONS, example, str(tmp_path), "t", write=False)) \
        == [example_of(gpt2_tokenizer, OPTIONS)(r) for r in records]
    assert calls == [1] * 10 and not list(tmp_path.iterdir())  # no file yet: tokenised, nothing written
    tokenized(records, gpt2_tokenizer, OPTIONS, example, str(tmp_path), "t")  # the main process writes
    features = tokenized(records, gpt2_tokenizer, OPTIONS, example, str(tmp_path), "t", write=False)
    assert calls == [1] * 20 and features.dataset.cache_files  # memory-mapped from the main process's file


def test_every_input_is_part_of_the_key(data_dir, gpt2_tokenizer):
    records = load_task_split(data_dir, "openbookqa", "train")[:5]
    key = cache_key(records, gpt2_tokenizer, OPTIONS)
    assert key == cache_key([dict(r) for r in records], gpt2_tokenizer, dict(OPTIONS))
    edited = [dict(r) for r in records]
    edited[3]["output"] = edited[3]["output"].replace("answer", "Answer")
    assert cache_key(edited, gpt2_tokenizer, OPTIONS) != key
    assert cache_key(records[::-1], gpt2_tokenizer, OPTIONS) != key
    for name, value in (("cutoff_len", 64), ("protocol", "clean"), ("train_on_inputs", True), ("answer_format", "text")):
        assert cache_key(records, gpt2_tokenizer, {**OPTIONS, name: value}) != key
    other = type(gpt2_tokenizer).from_pretrained(gpt2_tokenizer.name_or_path)
    other.add_tokens(["<new-token>"])
    assert cache_key(records, other, OPTIONS) != key


def test_a_damaged_cache_file_is_rebuilt(data_dir, gpt2_tokenizer, tmp_path):
    records = load_task_split(data_dir, "boolq", "train")[:8]
    calls = []
    example = example_of(gpt2_tokenizer, OPTIONS, calls)
    tokenized(records, gpt2_tokenizer, OPTIONS, example, str(tmp_path), "t")
    (path,) = tmp_path.glob("features-*.arrow")
    path.write_bytes(b"not an arrow file")
    assert list(tokenized(records, gpt2_tokenizer, OPTIONS, example, str(tmp_path), "t")) \
        == [example_of(gpt2_tokenizer, OPTIONS)(r) for r in records]
    assert len(calls) == 16 and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_bad_record_fails_with_its_own_error_and_leaves_no_file(data_dir, gpt2_tokenizer, tmp_path):
    records = load_task_split(data_dir, "boolq", "train")[:30]

    def example(record):
        if record is records[17]:
            raise DataError("train.json record 17: response is 300 tokens")
        return example_of(gpt2_tokenizer, OPTIONS)(record)
    with pytest.raises(DataError) as info:
        tokenized(records, gpt2_tokenizer, OPTIONS, example, str(tmp_path), "t")
    assert str(info.value) == "train.json record 17: response is 300 tokens"
    assert not list(tmp_path.iterdir())


def test_cli_run_with_a_cache_trains_the_same(tiny_neo_dir, small_data_dir, tmp_path, capsys):
    common = ["--model_name", tiny_neo_dir, "--data_dir", small_data_dir, "--dataset", "mix:boolq,openbookqa",
              "--peft_type", "hira", "--r_ab", "4", "--max_steps", "2", "--batch", "2", "--val_size", "4",
              "--eval_steps", "2", "--output_folder", tmp_path / "runs"]
    logs = []
    for name, cache in (("plain", "none"), ("fills", tmp_path / "cache"), ("reads", tmp_path / "cache")):
        rc, err = run_main([*common, "--run_name", name, "--cache_dir", cache], capsys)
        assert rc == 0, err
        logs.append([{k: v for k, v in json.loads(line).items() if k not in ("time", "tokens_per_s")}
                     for line in (tmp_path / "runs" / name / "log.jsonl").read_text().splitlines()])
    assert len(list((tmp_path / "cache").glob("features-*.arrow"))) == 2  # training and validation features
    assert logs[0] == logs[1] == logs[2]


def test_the_key_ignores_the_truncation_state_a_call_leaves(data_dir, gpt2_tokenizer):
    import copy

    records = load_task_split(data_dir, "boolq", "train")[:3]
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    key = cache_key(records, tokenizer, OPTIONS)
    tokenizer("some text", truncation=True, max_length=5)  # what the hira protocol's tokenisation does
    assert cache_key(records, tokenizer, OPTIONS) == key
