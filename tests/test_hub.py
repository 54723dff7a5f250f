"""Records through 🤗 datasets from a Hub dataset (data/hub.py), tested OFFLINE on a local folder in the
Hub's layout (README.md YAML `configs:`, one config per task with train and test splits): the records
equal the local files' records (same fields, task tags and order), and a bad row fails with the local
files' one-line message, the source named as 'hf:<repo>:<config> <split>'."""
import json

import pytest

from data.commonsense import (DataError, has_split, load_records, load_task_split, load_train_data, record_place,
                              train_files)

TASKS = ("boolq", "openbookqa", "ARC-Easy")
N = 25  # records per split: the first N of the real files


@pytest.fixture
def folders(data_dir, tmp_path, monkeypatch):
    """(local data folder, Hub-layout folder) holding the same first N records of each task's splits;
    datasets' own cache goes under tmp_path."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    local, repo = tmp_path / "local", tmp_path / "repo"
    configs = []
    for task in TASKS:
        files = []
        for split in ("train", "test"):
            records = json.loads((data_dir / task / f"{split}.json").read_text())[:N]
            for root in (local, repo):
                (root / task).mkdir(parents=True, exist_ok=True)
                (root / task / f"{split}.json").write_text(json.dumps(records))
            files.append(f"    - split: {split}\n      path: {task}/{split}.json")
        configs.append(f"- config_name: {task}\n  data_files:\n" + "\n".join(files))
    (repo / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n# commonsense tasks\n")
    return local, repo


def test_training_records_equal_the_local_files(folders):
    local, repo = folders
    for dataset in ("mix:boolq,openbookqa,ARC-Easy", "openbookqa", "obqa"):
        expected = load_train_data(local, dataset)
        assert load_train_data(f"hf:{repo}", dataset) == expected  # same records, task tags and order
        assert len(expected) == N * len(dataset.split(",")) and expected[0]["task"]
    # --dataset hf:<repo>:<config>: one split, untagged (as commonsense_170k.json's records are)
    assert load_train_data(local, f"hf:{repo}:ARC-Easy") == load_records(local / "ARC-Easy" / "train.json")
    assert train_files(local, f"hf:{repo}:boolq") == [f"hf:{repo}:boolq train"]


def test_evaluation_records_equal_the_local_files(folders):
    local, repo = folders
    for task in TASKS:
        assert load_task_split(f"hf:{repo}", task, "test") == load_task_split(local, task, "test")
    assert [has_split(f"hf:{repo}", t, "test") for t in ("boolq", "ARC-Easy", "piqa")] == [True, True, False]


def test_a_bad_row_is_named_as_a_local_file_is(folders):
    local, repo = folders
    records = json.loads((repo / "boolq" / "train.json").read_text())
    records[3]["instruction"] = "  "
    for root in (local, repo):
        (root / "boolq" / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataError) as from_file:
        load_train_data(local, "boolq")
    with pytest.raises(DataError) as from_hub:
        load_train_data(f"hf:{repo}", "boolq")
    assert str(from_file.value) == f"{local}/boolq/train.json: record 3 has no non-empty string field 'instruction'"
    assert str(from_hub.value) == f"hf:{repo}:boolq train: record 3 has no non-empty string field 'instruction'"


def test_a_missing_repo_or_config_is_one_line(folders, tmp_path):
    _, repo = folders
    for spec in (f"hf:{repo}:piqa", f"hf:{tmp_path / 'nowhere'}"):
        with pytest.raises(DataError) as info:
            load_train_data("unused", spec)
        message = str(info.value)
        assert message.startswith(f"{spec} train: cannot be loaded (") and "\n" not in message
    with pytest.raises(DataError, match="no dataset repository named"):
        load_train_data("unused", "hf:")


def test_record_place_names_the_hub_split(folders):
    _, repo = folders
    records = load_train_data(f"hf:{repo}", "mix:boolq,openbookqa")
    assert record_place(f"hf:{repo}", "mix:boolq,openbookqa", records, records[N + 4]) \
        == f"hf:{repo}:openbookqa train record 4"
    one = load_train_data("unused", f"hf:{repo}:boolq")
    assert record_place("unused", f"hf:{repo}:boolq", one, one[7]) == f"hf:{repo}:boolq train record 7"


def test_a_run_on_the_hub_layout_trains_as_on_the_local_files(folders, tiny_neo_dir, tmp_path, capsys):
    from conftest import run_main

    local, repo = folders
    logs = []
    for name, data in (("local", local), ("hub", f"hf:{repo}")):
        rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", data, "--dataset", "mix:boolq,openbookqa",
                            "--peft_type", "hira", "--r_ab", "4", "--max_steps", "2", "--batch", "2", "--val_size", "4",
                            "--eval_steps", "2", "--output_folder", tmp_path / "runs", "--run_name", name], capsys)
        assert rc == 0, err
        logs.append([{k: v for k, v in json.loads(line).items() if k not in ("time", "tokens_per_s")}
                     for line in (tmp_path / "runs" / name / "log.jsonl").read_text().splitlines()])
    assert logs[0] == logs[1] and len(logs[0]) >= 2
