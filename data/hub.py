"""Records from the Hugging Face Hub through 🤗 datasets, for users who are online: the same records as
the LLM-Adapters files, in a dataset repository instead of a local folder.

    --dataset  hf:<repo>[:<config>]   training records: the repo's (config's) train split
    --data_dir hf:<repo>              a task name reads the config named as the task (canonical name, e.g.
                                      ARC-Easy), split train for training and test for evaluation;
                                      common_170k reads the default config's train split

<repo> is a Hub dataset id (user/name) or a local folder in the Hub's layout (data files, optionally a
README.md whose YAML `configs:` maps configs and splits to files): `datasets.load_dataset` reads both
the same way, which is how the tests check this offline. The rows are checked by the same rules, with
the same one-line messages, as a local file (data/commonsense.py check_records), the source named as
"hf:<repo>:<config> <split>" where a file path would be. Arrow stores a field some rows lack as null
in every row, so null fields are dropped (a null "input" becomes "", as in a local file).
"""
PREFIX = "hf:"


def is_hub(spec) -> bool:
    return str(spec).startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None]:
    """'hf:<repo>[:<config>]' -> (repo, config or None)."""
    repo, _, config = spec[len(PREFIX):].partition(":")
    return repo, config or None


def source(repo: str, config: str | None, split: str) -> str:
    """How messages name one split: 'hf:<repo>[:<config>] <split>'."""
    return f"{PREFIX}{repo}{':' + config if config else ''} {split}"


def hub_rows(repo: str, config: str | None, split: str) -> list[dict]:
    """The split's rows as dicts, null fields dropped. datasets' own exceptions pass through (the caller,
    data/commonsense.py, turns them into its one-line DataError)."""
    from datasets import load_dataset

    rows = load_dataset(repo, config, split=split).to_list()
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def hub_configs(repo: str) -> list[str]:
    """The repo's config names (empty if it cannot be read)."""
    from datasets import get_dataset_config_names

    try:
        return get_dataset_config_names(repo)
    except Exception:  # unreadable: every task counts as missing, and the caller says so
        return []
