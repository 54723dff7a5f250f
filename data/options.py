"""Data options of training (flags generated from these fields; see utils/options.py)."""
import os
from dataclasses import dataclass

from utils.options import Options, non_negative, option, positive

DEFAULT_DATA_DIR = os.environ.get("KNOWHIRA_DATA_DIR", "data/commonsense")


@dataclass
class DataOptions(Options):
    dataset: str = option("common_170k", "training: common_170k | mix:task1,task2,... | task; "
                          "evaluation (--ckpt): task name, alias, comma list, or all")
    data_dir: str = option(DEFAULT_DATA_DIR, "folder with <task>/{train,test}.json (env KNOWHIRA_DATA_DIR)")
    cutoff_len: int = option(256, "maximum tokens of prompt + response (the prompt is cut from the left)",
                             check=positive)
    train_on_inputs: bool = option(False, "also put loss on the prompt")
    val_size: int = option(120, "held-out validation examples (seed 42)", check=non_negative)
