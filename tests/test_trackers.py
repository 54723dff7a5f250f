"""--report_to (training/trackers.py): every chosen tracker holds the scalars of log.jsonl and the run's
args.json, read back from what it wrote, offline. One tiny in-process training run (tiny RANDOM GPT-Neo,
4 steps, validation at steps 2 and 4) reports to TensorBoard and to each of wandb (offline mode, its
.wandb file), mlflow (a local file store) and trackio (its local sqlite) that is installed
(requirements-dev.txt installs them; pytest.importorskip elsewhere). A tracker that is not installed or
not configured, and a bad name, are one line and exit 2 before anything is written; a tracker failing
mid-run is a warning; TensorBoard keeps purge_step on resume; `none` writes log.jsonl only."""
import json
import struct
import time
from pathlib import Path

import pytest
import torch

import train_knowhira
from conftest import run_main
from training import trackers
from training.logger import RunLogger, read_log

OPTIONAL = [name for name in ("wandb", "mlflow", "trackio") if trackers.installed(name)]


def train_args(model_dir, data_dir, out, *extra):
    return ["--model_name", model_dir, "--data_dir", data_dir, "--dataset", "mix:boolq,openbookqa",
            "--val_size", 8, "--cutoff_len", 128, "--batch", 8, "--r_ab", 4,
            "--target_modules", "q_proj,v_proj", "--lr", "1e-2", "--seed", 3, "--max_steps", 4,
            "--eval_steps", 2, "--save_steps", 1000, "--output_folder", out, "--run_name", "r", *extra]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_neo_dir, small_data_dir):
    """A finished run reporting to TensorBoard and every installed optional tracker, and its stores."""
    root = tmp_path_factory.mktemp("tracked")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(),
           "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_EXPERIMENT_NAME": "knowhira_test",
           "TRACKIO_DIR": str(root / "trackio"), "TRACKIO_PROJECT": "knowhira_test"}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            report_to = ",".join(["tensorboard", *OPTIONAL])
            argv = [str(a) for a in train_args(tiny_neo_dir, small_data_dir, root / "out", "--report_to", report_to)]
            assert train_knowhira.main(argv) == 0
    finally:
        torch.set_num_threads(n)
    run = root / "out" / "r"
    return {"run": run, "root": root, "log": read_log(run), "args": json.loads((run / "args.json").read_text())}


def scalars_by_key(log: list[dict]) -> dict:
    """{key: [(step, value)]} of what RunLogger sends every tracker: numbers, not the step itself."""
    out = {}
    for record in log:
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                out.setdefault(k, []).append((record["step"], float(v)))
    return out


def assert_same_scalars(got: dict, log: list[dict], rel=1e-6):
    want = scalars_by_key(log)
    assert {"loss_task", "loss_reg", "loss_total", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_acc",
            "val_acc/boolq", "val_acc/openbookqa"} <= want.keys()
    assert got.keys() == want.keys()
    for k in want:
        assert [s for s, _ in got[k]] == [s for s, _ in want[k]], k
        assert [v for _, v in got[k]] == pytest.approx([v for _, v in want[k]], rel=rel), k


def test_the_run_logged_training_and_validation(tracked):
    assert [r["step"] for r in tracked["log"]] == [1, 2, 3, 4]
    assert [r["step"] for r in tracked["log"] if "val_loss" in r] == [2, 4]
    assert tracked["args"]["report_to"] == ["tensorboard", *OPTIONAL]


def test_tensorboard_holds_the_scalars_of_log_jsonl_and_the_config(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tracked["run"] / "tb"
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1 and [p for p in tb.iterdir() if p.is_dir()] == []
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    got = {k: [(e.step, e.value) for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}
    assert_same_scalars(got, tracked["log"])  # float32 in the event file (time: 1.8e9 to 1e-7)
    (config,) = acc.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert "    peft_type: \"knowhira\"" in text and "    r_ab: 4" in text
    assert "    target_modules: \"q_proj,v_proj\"" in text and "    report_to: " in text


def wandb_records(path: Path) -> list:
    """The records of a .wandb file (wandb's LevelDB-style log: 7-byte header, 32 KiB blocks, each
    record chunk crc32 + length + type; FULL=1, FIRST=2, MIDDLE=3, LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data, block, records, pos, chunks = path.read_bytes(), 32768, [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_file_holds_the_scalars_and_the_config(tracked):
    pytest.importorskip("wandb")
    (path,) = (tracked["run"] / "wandb").glob("offline-run-*/run-*.wandb")  # under the run folder
    records = wandb_records(path)
    got, config = {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for k, v in items.items():
                if not k.startswith("_"):
                    got.setdefault(k, []).append((items["_step"], float(v)))
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update if i.key})
        elif kind == "run":
            assert r.run.display_name == "r" and r.run.project == "knowhira"
    assert_same_scalars(got, tracked["log"], rel=1e-12)  # JSON: exact
    assert config["peft_type"] == "knowhira" and config["r_ab"] == 4 and config["target_modules"] == "q_proj,v_proj"
    assert config["lr"] == tracked["args"]["lr"] and config["n_train"] == tracked["args"]["n_train"]


def test_mlflow_store_holds_the_scalars_and_the_config(tracked):
    pytest.importorskip("mlflow")
    experiments = [p for p in (tracked["root"] / "mlruns").iterdir()
                   if (p / "meta.yaml").is_file() and "name: knowhira_test" in (p / "meta.yaml").read_text()]
    (experiment,) = experiments
    (run,) = [p for p in experiment.iterdir() if p.is_dir()]
    assert (run / "tags" / "mlflow.runName").read_text() == "r"
    got = {}
    for f in sorted((run / "metrics").rglob("*")):
        if f.is_file():  # "<ms> <value> <step>" per line
            key = f.name.replace(".", "/")  # val_acc/boolq is logged as val_acc.boolq (RunMLflow)
            got[key] = [(int(line.split()[2]), float(line.split()[1])) for line in f.read_text().splitlines()]
    assert_same_scalars(got, tracked["log"], rel=1e-12)
    params = {f.name: f.read_text() for f in (run / "params").iterdir()}
    assert params["peft_type"] == "knowhira" and params["r_ab"] == "4" and params["target_modules"] == "q_proj,v_proj"


def test_trackio_database_holds_the_scalars_and_the_config(tracked):
    pytest.importorskip("trackio")
    import sqlite3

    db = sqlite3.connect(tracked["root"] / "trackio" / "knowhira_test.db")
    got = {}
    for step, metrics in db.execute("select step, metrics from metrics where run_name = 'r' order by id"):
        for k, v in json.loads(metrics).items():
            k = "time" if k == "__time" else k  # a key trackio reserves, renamed by trackio itself
            if not k.startswith("_") and isinstance(v, (int, float)):
                got.setdefault(k, []).append((step, float(v)))
    assert_same_scalars(got, tracked["log"], rel=1e-12)
    (config,) = [json.loads(c) for (c,) in db.execute("select config from configs where run_name = 'r'")]
    assert config["peft_type"] == "knowhira" and config["r_ab"] == 4 and config["target_modules"] == "q_proj,v_proj"


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------
@pytest.mark.parametrize("value,needle", [("wandbx", "'wandbx'"), ("none,tensorboard", "goes alone"),
                                          ("mlflow,mlflow", "twice"), ("", "comma list")])
def test_a_bad_name_is_a_one_line_error(value, needle, tmp_path, capsys, tiny_neo_dir, small_data_dir):
    rc, err = run_main(train_args(tiny_neo_dir, small_data_dir, tmp_path / "out", "--report_to", value), capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--report_to" in err and needle in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,install", [("wandb", "pip install wandb"), ("mlflow", "pip install mlflow-skinny"),
                                          ("trackio", "pip install trackio")])
def test_a_tracker_not_installed_is_one_line_at_start(name, install, tmp_path, capsys, monkeypatch, tiny_neo_dir,
                                                     small_data_dir):
    real = trackers.installed
    monkeypatch.setattr(trackers, "installed", lambda module: module != name and real(module))
    monkeypatch.setenv("WANDB_MODE", "offline")
    rc, err = run_main(train_args(tiny_neo_dir, small_data_dir, tmp_path / "out", "--report_to",
                                  f"tensorboard,{name}"), capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"error: --report_to {name}: the {name} package is not installed ({install}" in err
    assert not (tmp_path / "out").exists()


def test_a_tracker_not_configured_is_named_with_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers, "installed", lambda module: True)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI",
                "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no ~/.config/wandb/settings
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    with pytest.raises(trackers.BadInput, match=r"^--report_to wandb: no W&B credentials .*WANDB_MODE=offline"):
        trackers.check_report_to(["tensorboard", "wandb"])
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    trackers.check_report_to(["wandb"])  # `wandb login` wrote the key: configured
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_MODE", "offline")
    trackers.check_report_to(["wandb", "trackio", "tensorboard"])
    with pytest.raises(trackers.BadInput, match=r"^--report_to mlflow: set MLFLOW_TRACKING_URI"):
        trackers.check_report_to(["mlflow"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    trackers.check_report_to(["mlflow"])
    trackers.check_report_to(["none"])


# ---- the logger: none, resume, a tracker failing -------------------------------------------------
def records(steps, scale=1.0):
    return [{"step": s, "loss_task": scale * s, "lr": 0.1, "time": 1.0 + s} for s in steps]


def tb_scalars(run_dir, key="loss_task"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def next_second():
    """Wait for the wall clock's next whole second. TensorBoard reads a folder's event files in name order, and a
    name is events.out.tfevents.<whole seconds>.<host>.<pid>.<a per-process counter>: two writers of ONE process
    in the same second sort by that counter as text ('10' before '9' once earlier tests made nine). A resumed run
    is a new process started later; in one test process the next second gives the same order."""
    time.sleep(1.01 - time.time() % 1)


def test_resume_purges_tensorboard_steps_after_the_checkpoint(tmp_path):
    first = RunLogger(tmp_path)
    for r in records([1, 2, 3, 4]):
        first.log(r)
    first.close()
    next_second()
    again = RunLogger(tmp_path, resume_step=2)  # killed after step 4, resumed from the step-2 checkpoint
    for r in records([3, 4], scale=10.0):
        again.log(r)
    again.close()
    assert [r["loss_task"] for r in read_log(tmp_path)] == [1.0, 2.0, 30.0, 40.0]
    assert tb_scalars(tmp_path) == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    next_second()
    fresh = RunLogger(tmp_path, resume_step=0)  # no checkpoint left: training restarts from step 0
    fresh.log(records([1], scale=100.0)[0])
    fresh.close()
    assert read_log(tmp_path) == records([1], scale=100.0) and tb_scalars(tmp_path) == [(1, 100.0)]


def test_none_writes_log_jsonl_only(tmp_path):
    logger = RunLogger(tmp_path, report_to=["none"])
    for r in records([1, 2]):
        logger.log(r)
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
    assert read_log(tmp_path) == records([1, 2])


def test_a_failing_tracker_is_one_warning_and_the_log_goes_on(tmp_path, capsys):
    (tmp_path / "tb").write_text("a file where TensorBoard's folder goes")
    logger = RunLogger(tmp_path)
    for r in records([1, 2, 3]):
        logger.log(r)
    logger.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: TensorBoard log {tmp_path / 'tb'} stopped (")
    assert err[0].endswith("; log.jsonl goes on")
    assert read_log(tmp_path) == records([1, 2, 3])
