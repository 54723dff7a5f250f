"""Tokenised training features as a 🤗 `datasets` Dataset, kept on disk as an Arrow file that every
process memory-maps and the next run with the same inputs reuses.

Tokenising Commonsense-170K takes about a minute per process on a CPU core (measured: 2,170 records/s),
and every torchrun rank did it again, each holding its own copy as Python lists. Here the features
are written once, by `Dataset.map`, to

    <cache_dir>/features-<key>.arrow    columns input_ids and labels (lists of int32)

and read by every rank with `Dataset.from_file`: a memory map, so the ranks of one machine share
the pages (docs/speed.md "Tokenised features": seconds and peak RSS against the pickle-free .npz
cache this replaced). The key is our own, passed to `map` as `new_fingerprint` and as the file
name: `datasets`' default fingerprint hashes the mapped function, a closure over the tokenizer,
which is not stable across processes. The features are a pure function of the records, the
tokenizer, the data options and the tokenising code, so the key hashes those four (a changed record,
tokenizer, --cutoff_len, --protocol, --train_on_inputs, --answer_format or an edit of the data/
code that tokenises is a new key; nothing is ever invalidated by hand).

A miss tokenises (bad records fail exactly as before: `map` removes its temporary file and the error
is the example function's one line) and the file appears atomically when every record is done;
under torchrun the caller lets the main process go first (accelerate's `main_process_first`), so
the other ranks find the file and do not tokenise. `--cache_dir none` keeps the features in memory.
"""
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

# the code whose behaviour the features depend on (besides the tokenizer); this file's own too
CODE = ("prompt.py", "protocols.py", "tokenize.py", "answer_format.py", "questions.py", "choices.py", "cloze.py",
        "features.py")
COLUMNS = ("input_ids", "labels")
BATCH = 1000  # records per map call and per Arrow record batch


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
    """sha256 over the records (JSON, sorted keys), the tokenizer's fingerprint, the options and the
    tokenising code's bytes; 32 hex digits (`datasets` accepts it as a fingerprint)."""
    h = hashlib.sha256()
    for part in (json.dumps(records, sort_keys=True, ensure_ascii=False), tokenizer_fingerprint(tokenizer),
                 json.dumps(options, sort_keys=True)):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    here = Path(__file__).parent
    for name in CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:32]


class TokenFeatures(Sequence):
    """The features as the training loop reads them: features[i] = {"input_ids": [...], "labels": [...]}
    (Python ints), len(features), iteration; `dataset` is the Arrow-backed Dataset underneath."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return self.dataset.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.dataset[int(i)]

    def __iter__(self):
        for batch in self.dataset.iter(batch_size=BATCH):
            yield from ({"input_ids": a, "labels": b} for a, b in zip(batch["input_ids"], batch["labels"]))


def _arrow_features():
    from datasets import Features, List, Value

    return Features({name: List(Value("int32")) for name in COLUMNS})


def _readable(path: Path, n: int) -> bool:
    """Whether `path` is a features file of `n` rows (a damaged or foreign file is not)."""
    from datasets import Dataset

    try:
        ds = Dataset.from_file(str(path))
    except Exception:  # pyarrow raises several kinds (ArrowInvalid, OSError, ...) for a file that is not Arrow
        return False
    return ds.num_rows == n and tuple(ds.column_names) == COLUMNS


def tokenized(records: list[dict], tokenizer, options: dict, example, cache_dir: str | None, desc: str,
              write: bool = True) -> TokenFeatures:
    """TokenFeatures of example(record) -> {"input_ids", "labels"} for every record, in order, or the
    stored result of an earlier identical call. `options`: every setting `example` depends on;
    cache_dir None or "none": no file. write=False (a rank that is not the main process): read the
    file when it is there, else tokenise in memory without writing."""
    from datasets import Dataset
    from datasets.fingerprint import generate_random_fingerprint

    indices = Dataset.from_dict({"index": list(range(len(records)))})  # in memory: no file of datasets' own

    def tokenize(batch):
        out = {name: [] for name in COLUMNS}
        for i in batch["index"]:
            feature = example(records[i])
            for name in COLUMNS:
                out[name].append(feature[name])
        return out

    def run(path: Path | None):
        return TokenFeatures(indices.map(
            tokenize, batched=True, batch_size=BATCH, remove_columns=["index"], features=_arrow_features(),
            desc=f"tokenize {desc}", writer_batch_size=BATCH, load_from_cache_file=True,
            new_fingerprint=path.stem.split("-", 1)[1] if path else generate_random_fingerprint(),
            cache_file_name=str(path) if path else None))

    if not cache_dir or cache_dir == "none" or not records:
        return run(None)
    path = Path(cache_dir) / f"features-{cache_key(records, tokenizer, options)}.arrow"
    if not write:  # a memory map of the main process's file, else tokenised in memory
        return run(path if path.exists() and _readable(path, len(records)) else None)
    if path.exists() and not _readable(path, len(records)):
        path.unlink()  # damaged or foreign: tokenise again and replace it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return run(path)
    except OSError as e:  # a read-only or full disk costs the cache, not the run (map removed its temporary file)
        print(f"warning: tokenised features not cached in {cache_dir} ({e.strerror or e})")
        return run(None)
