"""Tokenised training features, kept on disk and reused by the next run with the same inputs.

Tokenising Commonsense-170K takes about a minute per process on a CPU core (measured: 2,170 records/s),
and every torchrun rank did it again. The features are a pure function of the records, the
tokenizer, the data options and the tokenisation code, so they are stored under a key hashing all of
those (a changed record, tokenizer, --cutoff_len, --protocol, --train_on_inputs, --answer_format or
an edit of the data/ code that tokenises is a new key; nothing is ever invalidated by hand):

    <cache_dir>/features-<sha256[:32]>.npz   input_ids and labels (int32, concatenated), lengths

A miss tokenises as before (bad records fail exactly as before: nothing is cached until every
record tokenised) and rank 0 writes the file atomically; every rank reads a hit. `--cache_dir none`
turns it off. (The `datasets` library's cache was the other candidate: its fingerprint of a
closure over a tokenizer is not stable across processes, and it added a dependency nothing else
used, so it was removed from requirements.txt.)
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write_path

# the code whose behaviour the features depend on (besides the tokenizer)
CODE = ("prompt.py", "protocols.py", "tokenize.py", "answer_format.py", "questions.py", "choices.py")


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's full definition (a fast tokenizer's JSON: vocabulary, merges, normaliser,
    special tokens), else its class, vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the call-time truncation/padding state a tokenizer(...) call leaves
        body = json.dumps({k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")},
                          sort_keys=True)
    else:
        body = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return json.dumps([type(tokenizer).__name__, body, tokenizer.all_special_tokens,
                       tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(tokenizer, "add_bos_token", None)])


def cache_key(records: list[dict], tokenizer, options: dict) -> str:
    h = hashlib.sha256()
    for part in (json.dumps(records, sort_keys=True, ensure_ascii=False), tokenizer_fingerprint(tokenizer),
                 json.dumps(options, sort_keys=True)):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    here = Path(__file__).parent
    for name in CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:32]


def cached_features(records: list[dict], tokenizer, options: dict, build, cache_dir: str | None,
                    write: bool = True) -> list[dict]:
    """build(records) -> [{"input_ids", "labels"}], or the stored result of an earlier identical call.
    `options`: every setting build depends on; cache_dir None or "none": no cache."""
    if not cache_dir or cache_dir == "none" or not records:
        return build(records)
    path = Path(cache_dir) / f"features-{cache_key(records, tokenizer, options)}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                ids, labels, lengths = f["input_ids"], f["labels"], f["lengths"]
            if len(lengths) == len(records):
                cuts = np.cumsum(lengths)[:-1]
                return [{"input_ids": a.tolist(), "labels": b.tolist()}
                        for a, b in zip(np.split(ids, cuts), np.split(labels, cuts))]
        except (OSError, ValueError, KeyError):
            pass  # unreadable (e.g. a foreign file): tokenise again and replace it
    features = build(records)
    if write:
        lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
        ids = np.array([t for f in features for t in f["input_ids"]], dtype=np.int32)
        labels = np.array([t for f in features for t in f["labels"]], dtype=np.int32)
        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, input_ids=ids, labels=labels, lengths=lengths)
        try:
            atomic_write_path(path, save)
        except OSError as e:  # a read-only or full disk costs the cache, not the run
            print(f"warning: tokenised features not cached in {cache_dir} ({e.strerror or e})")
    return features
