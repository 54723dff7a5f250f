"""Data options of training (flags generated from these fields; see utils/options.py)."""
import os
from dataclasses import dataclass

from data.answer_format import ANSWER_FORMATS
from data.protocols import DEFAULT_PROTOCOL, PROTOCOLS
from utils.options import Options, non_negative, option, positive

DEFAULT_DATA_DIR = os.environ.get("KNOWHIRA_DATA_DIR", "data/commonsense")
DEFAULT_CACHE_DIR = os.environ.get("KNOWHIRA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "knowhira"))


@dataclass
class DataOptions(Options):
    dataset: str = option("common_170k", "training: common_170k | mix:task1,task2,... | task | "
                          "hf:<repo>[:<config>] (a Hub dataset's train split, data/hub.py); "
                          "evaluation (--ckpt): task name, alias, comma list, or all")
    data_dir: str = option(DEFAULT_DATA_DIR, "folder with <task>/{train,test}.json, or hf:<repo>: a Hub dataset with "
                          "one config per task (env KNOWHIRA_DATA_DIR)")
    cutoff_len: int = option(256, "maximum tokens of prompt + response (the prompt is cut from the left)",
                             check=positive)
    protocol: str = option(DEFAULT_PROTOCOL, "prompts, tokenisation, masking, decoding and answer extraction, "
                           "for training and evaluation (docs/evaluation.md); evaluation: default the run's",
                           choices=tuple(PROTOCOLS))
    answer_format: str = option("label", "what the model is trained to say: the answer label ('the correct answer "
                                "is answer2', as published), the chosen option's text, or (cloze) the gold "
                                "choice as the continuation of 'Question: ...\\nAnswer:', lm-eval's cloze "
                                "request, no template; evaluation: default the run's (docs/evaluation.md)",
                                choices=ANSWER_FORMATS)
    train_on_inputs: bool | None = option(None, "also put loss on the prompt (default: the protocol's; on "
                                          "for llm_adapters)")
    cache_dir: str = option(DEFAULT_CACHE_DIR, "tokenised features are kept here and reused by runs with the "
                            "same records, tokenizer and data options (data/features.py: Arrow files); 'none' = off; env "
                            "KNOWHIRA_CACHE")
    val_size: int = option(120, "held-out validation examples (seed 42)", check=non_negative)
