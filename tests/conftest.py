"""Shared fixtures: the real GPT-2 tokenizer and the real commonsense data folder (from env vars),
and tiny RANDOMLY INITIALISED GPT-Neo / GPT-2 / Llama models for fast tests."""
import contextlib
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # on sys.path for the tests: pyproject.toml's pytest pythonpath
# no tokenised-feature cache (data/features.py) unless a test asks for one: every test tokenises
os.environ.setdefault("KNOWHIRA_CACHE", "none")


def _env_dir(var):
    path = os.environ.get(var)
    if not path or not Path(path).is_dir():
        pytest.skip(f"{var} is not set to an existing folder (scripts/test.sh sets it)")
    return Path(path)


@pytest.fixture(scope="session")
def data_dir():
    """Real LLM-Adapters files (../shared/data/commonsense in CI)."""
    return _env_dir("KNOWHIRA_DATA_DIR")


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 / GPT-Neo BPE tokenizer, with pad = eos as the project sets it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_env_dir("KNOWHIRA_TOKENIZER_DIR")))
    tok.pad_token = tok.eos_token
    return tok


def tiny_config(arch: str, vocab_size: int = 50257):
    """Tiny random configs; hidden sizes are deliberately non-square-friendly (e.g. 48 -> 96)."""
    from transformers import GPT2Config, GPTNeoConfig, LlamaConfig

    if arch == "gpt_neo":
        return GPTNeoConfig(vocab_size=vocab_size, hidden_size=48, num_layers=2, num_heads=4,
                            attention_types=[[["global", "local"], 1]], max_position_embeddings=512,
                            intermediate_size=96, window_size=16)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=48, n_layer=2, n_head=4, n_positions=512)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=80,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, vocab_size: int = 50257):
    """A tiny RANDOMLY INITIALISED causal LM (not pretrained) in fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_neo_dir(tmp_path_factory, gpt2_tokenizer):
    """A tiny RANDOM GPT-Neo (tiny_model("gpt_neo")) saved with the real GPT-2 tokenizer
    (pad = eos): a local folder to pass as --model_name."""
    out = tmp_path_factory.mktemp("tiny_gpt_neo")
    tiny_model("gpt_neo").save_pretrained(str(out))
    gpt2_tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, gpt2_tokenizer):
    """A tiny RANDOM Llama (tiny_model("llama")) saved with the real GPT-2 tokenizer: a local --model_name."""
    out = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(str(out))
    gpt2_tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, data_dir):
    """A data folder holding the FIRST 40 real training records of boolq and openbookqa
    (<task>/train.json), so CLI runs spend their time training rather than tokenizing."""
    import json

    out = tmp_path_factory.mktemp("small_commonsense")
    for task in ("boolq", "openbookqa"):
        records = json.loads((data_dir / task / "train.json").read_text())[:40]
        (out / task).mkdir()
        (out / task / "train.json").write_text(json.dumps(records))
    return out


@pytest.fixture(scope="session")
def arc_obqa_dir(tmp_path_factory, data_dir):
    """A data folder with the first 24 real train and test records of ARC-Easy and openbookqa."""
    import json

    out = tmp_path_factory.mktemp("arc_obqa")
    for task in ("ARC-Easy", "openbookqa"):
        (out / task).mkdir()
        for split in ("train", "test"):
            records = json.loads((data_dir / task / f"{split}.json").read_text())[:24]
            (out / task / f"{split}.json").write_text(json.dumps(records))
    return out


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a test module: tiny models gain nothing from more, and on a busy
    2-core machine extra OpenMP threads make them many times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def boolq_dir(tmp_path_factory, data_dir):
    """A data folder with the first 30 real boolq train and test records (training + evaluation)."""
    import json

    out = tmp_path_factory.mktemp("boolq_data")
    (out / "boolq").mkdir()
    for split in ("train", "test"):
        records = json.loads((data_dir / "boolq" / f"{split}.json").read_text())[:30]
        (out / "boolq" / f"{split}.json").write_text(json.dumps(records))
    return out


@contextlib.contextmanager
def one_thread():
    """torch on one thread while an in-process run trains (the xdist workers share the 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_main(argv, capsys):
    """(exit status, stderr) of train_knowhira.main(argv) run in-process (argparse errors included)."""
    import train_knowhira

    try:
        rc = train_knowhira.main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        rc = e.code
    return rc, capsys.readouterr().err
