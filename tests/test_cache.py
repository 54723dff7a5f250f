"""The tokenised-feature cache (data/cache.py): a second identical run reads what the first wrote,
the features are the same, and any change of records, tokenizer or data option is a new key."""
import json

import pytest

from conftest import run_main
from data.cache import cache_key, cached_features
from data.commonsense import load_task_split
from data.protocols import get_protocol

OPTIONS = {"protocol": "hira", "cutoff_len": 128, "train_on_inputs": False, "answer_format": "label"}


def tokenize(tokenizer, options):
    protocol = get_protocol(options["protocol"])
    calls = []

    def build(records):
        calls.append(len(records))
        return [protocol.train_example(tokenizer, r, options["cutoff_len"], options["train_on_inputs"])
                for r in records]
    return build, calls


def test_cached_features_equal_fresh_ones_and_are_reused(data_dir, gpt2_tokenizer, tmp_path):
    records = load_task_split(data_dir, "openbookqa", "train")[:50]
    build, calls = tokenize(gpt2_tokenizer, OPTIONS)
    fresh = build(records)
    first = cached_features(records, gpt2_tokenizer, OPTIONS, build, str(tmp_path))
    again = cached_features(records, gpt2_tokenizer, OPTIONS, build, str(tmp_path))
    assert first == fresh and again == fresh and calls == [50, 50]  # the second call read the file
    assert len(list(tmp_path.glob("features-*.npz"))) == 1
    assert cached_features(records, gpt2_tokenizer, OPTIONS, build, "none") == fresh and calls[-1] == 50


def test_every_input_is_part_of_the_key(data_dir, gpt2_tokenizer):
    records = load_task_split(data_dir, "openbookqa", "train")[:5]
    key = cache_key(records, gpt2_tokenizer, OPTIONS)
    assert key == cache_key([dict(r) for r in records], gpt2_tokenizer, dict(OPTIONS))
    edited = [dict(r) for r in records]
    edited[3]["output"] = edited[3]["output"].replace("answer", "Answer")
    assert cache_key(edited, gpt2_tokenizer, OPTIONS) != key
    for name, value in (("cutoff_len", 64), ("protocol", "clean"), ("train_on_inputs", True), ("answer_format", "text")):
        assert cache_key(records, gpt2_tokenizer, {**OPTIONS, name: value}) != key
    other = type(gpt2_tokenizer).from_pretrained(gpt2_tokenizer.name_or_path)
    other.add_tokens(["<new-token>"])
    assert cache_key(records, other, OPTIONS) != key


def test_a_damaged_cache_file_is_rebuilt(data_dir, gpt2_tokenizer, tmp_path):
    records = load_task_split(data_dir, "boolq", "train")[:8]
    build, calls = tokenize(gpt2_tokenizer, OPTIONS)
    cached_features(records, gpt2_tokenizer, OPTIONS, build, str(tmp_path))
    (path,) = tmp_path.glob("features-*.npz")
    path.write_bytes(b"not a numpy file")
    assert cached_features(records, gpt2_tokenizer, OPTIONS, build, str(tmp_path)) == build(records[:8])
    assert calls == [8, 8, 8]


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
    assert len(list((tmp_path / "cache").glob("features-*.npz"))) == 2  # training and validation features
    assert logs[0] == logs[1] == logs[2]


def test_the_key_ignores_the_truncation_state_a_call_leaves(data_dir, gpt2_tokenizer):
    import copy

    records = load_task_split(data_dir, "boolq", "train")[:3]
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    key = cache_key(records, tokenizer, OPTIONS)
    tokenizer("some text", truncation=True, max_length=5)  # what the hira protocol's tokenisation does
    assert cache_key(records, tokenizer, OPTIONS) == key
