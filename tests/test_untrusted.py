"""What the program reads back but did not write itself (issue 32): training data changed under a run,
folders that are not this project's runs, a results.json shared by two evaluations, damaged model files.
Tiny RANDOM GPT-Neo with the real GPT-2 tokenizer, in-process."""
import json
import shutil

import pytest
import torch

import train_knowhira
from conftest import one_thread, run_main

TARGETS = "q_proj,v_proj,out_proj,c_fc,c_proj"


def train_args(model_dir, data_dir, out, name, *extra):
    """boolq only (40 records, 4 held out -> 36), batch 12 -> 3 steps per epoch; a checkpoint at the end."""
    return ["--model_name", model_dir, "--data_dir", data_dir, "--dataset", "boolq", "--val_size", 4,
            "--cutoff_len", 128, "--batch", 12, "--r_ab", 4, "--target_modules", TARGETS, "--lr", "1e-2",
            "--seed", 3, "--eval_strategy", "no", "--save_steps", 1000, "--output_folder", out,
            "--run_name", name, *extra]


def one_line(err: str) -> str:
    """The error line (after notes and progress bars), which must be the last; no traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error: " in last, err
    return last[last.index("error: "):]


def snapshot(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def threads1():
    with one_thread():
        yield


@pytest.fixture
def own_data(tmp_path, small_data_dir):
    """A copy of the 40-record boolq training file that the test may edit."""
    out = tmp_path / "data"
    (out / "boolq").mkdir(parents=True)
    shutil.copy(small_data_dir / "boolq" / "train.json", out / "boolq" / "train.json")
    return out


# ---- 1. the training data changed under a run -----------------------------------------------------------
def test_resume_refuses_changed_training_data(own_data, tiny_neo_dir, tmp_path, capsys, threads1):
    out = tmp_path / "runs"
    rc, err = run_main(train_args(tiny_neo_dir, own_data, out, "r", "--max_steps", 2), capsys)
    assert rc == 0, err
    run, train = out / "r", own_data / "boolq" / "train.json"
    saved = json.loads((run / "args.json").read_text())
    assert saved["data_records"] == 40 and saved["allow_data_change"] is False
    state = torch.load(run / "checkpoints" / "step_000002" / "state.pt", weights_only=True)
    assert state["data"] == {"records": 40, "sha256": saved["data_sha256"]}

    records = json.loads(train.read_text())
    train.write_text(json.dumps(records[:35]))  # 5 records removed
    before = snapshot(run)
    rc, err = run_main(["--resume", run, "--max_steps", 4], capsys)
    assert rc == 2
    line = one_line(err)
    assert str(train) in line and "40 records when saved, 35 now" in line and "--allow_data_change" in line, line
    assert snapshot(run) == before  # nothing written

    # the same count, one answer edited: still refused
    edited = [dict(r) for r in records]
    edited[7]["output"] = edited[7]["output"] + " "
    train.write_text(json.dumps(edited))
    rc, err = run_main(["--resume", run, "--max_steps", 4], capsys)
    assert rc == 2 and "40 records then and now, their contents differ" in one_line(err)
    assert snapshot(run) == before

    # a flag on a new run is refused; with --resume it continues on the new records
    rc, err = run_main(train_args(tiny_neo_dir, own_data, out, "new", "--allow_data_change"), capsys)
    assert rc == 2 and "--allow_data_change goes with --resume" in one_line(err) and not (out / "new").exists()
    train.write_text(json.dumps(records[:35]))
    rc = train_knowhira.main([str(a) for a in ["--resume", run, "--max_steps", 4, "--allow_data_change"]])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "40 records when saved, 35 now; continuing on the new records (--allow_data_change)" in printed.out
    assert [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    now = json.loads((run / "args.json").read_text())
    assert now["data_records"] == 35 and now["data_sha256"] != saved["data_sha256"]
    assert now["allow_data_change"] is False  # one resume's permission, not the run's
    # the new checkpoints record the new data: resuming again needs no flag
    rc, err = run_main(["--resume", run, "--max_steps", 5], capsys)
    assert rc == 0, err


def test_resume_of_a_checkpoint_without_data_fingerprint(own_data, tiny_neo_dir, tmp_path, capsys, threads1):
    """Runs saved before fingerprints were recorded resume as before, with a note."""
    out = tmp_path / "runs"
    rc, err = run_main(train_args(tiny_neo_dir, own_data, out, "old", "--max_steps", 2), capsys)
    assert rc == 0, err
    run = out / "old"
    path = run / "checkpoints" / "step_000002" / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["data"]
    torch.save(state, path)
    args = json.loads((run / "args.json").read_text())
    for k in ("data_records", "data_sha256", "allow_data_change"):
        del args[k]
    (run / "args.json").write_text(json.dumps(args))
    rc = train_knowhira.main([str(a) for a in ["--resume", run, "--max_steps", 3]])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "records no training-data fingerprint" in printed.out and "resumed from" in printed.out
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 3


# ---- 2. folders that are not this project's runs ---------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_neo_dir, small_data_dir):
    """A finished 2-step run whose files the foreign folders below are made of."""
    out = tmp_path_factory.mktemp("finished")
    with one_thread():
        assert train_knowhira.main([str(a) for a in train_args(tiny_neo_dir, small_data_dir, out, "r",
                                                                "--max_steps", 2)]) == 0
    return out / "r"


def foreign(run, dst, kind):
    """A copy of `run` made foreign: args.json with keys no option has, without peft_type, without the
    training keys, or a genuine args.json in a folder that never trained (no checkpoints/, no log.jsonl)."""
    shutil.copytree(run, dst)
    args = json.loads((run / "args.json").read_text())
    if kind == "foreign_keys":
        args = {**args, "learning_rate": 0.1, "epochs": 3}
    elif kind == "no_peft_type":
        del args["peft_type"]
    elif kind == "no_dataset":
        del args["dataset"]
    else:
        shutil.rmtree(dst / "checkpoints")
        (dst / "log.jsonl").unlink()
    (dst / "args.json").write_text(json.dumps(args))
    return dst


MODES = {"resume": lambda d, tmp, data: ["--resume", d, "--max_steps", 3],
         "ckpt": lambda d, tmp, data: ["--ckpt", d, "--dataset", "boolq", "--data_dir", data, "--max_examples", 2],
         "export": lambda d, tmp, data: ["--ckpt", d, "--export", "peft", "--export_dir", tmp / "exported"]}


@pytest.mark.parametrize("kind,mode,needle", [
    ("foreign_keys", "resume", "unknown key(s) 'epochs', 'learning_rate'"),
    ("foreign_keys", "ckpt", "unknown key(s) 'epochs', 'learning_rate'"),
    ("foreign_keys", "export", "unknown key(s) 'epochs', 'learning_rate'"),
    ("no_peft_type", "resume", "missing 'peft_type'"),
    ("no_peft_type", "ckpt", "missing 'peft_type'"),
    ("no_peft_type", "export", "missing 'peft_type'"),
    ("no_dataset", "resume", "missing 'dataset'"),
    ("never_trained", "resume", "no checkpoints/ and no log.jsonl"),
])
def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(kind, mode, needle, finished_run, boolq_dir, tmp_path,
                                                                capsys):
    folder = foreign(finished_run, tmp_path / "folder", kind)
    before = snapshot(folder)
    rc, err = run_main(MODES[mode](folder, tmp_path, boolq_dir), capsys)
    assert rc == 2
    line = one_line(err)
    assert str(folder) in line and needle in line, line
    assert snapshot(folder) == before  # args.json byte-identical, nothing added
    assert not (tmp_path / "exported").exists()


# ---- 3. two evaluations into one results.json ------------------------------------------------------------
def _add_tasks(out_dir, prefix, barrier, n):
    from eval.evaluate import update_results_json

    barrier.wait()
    for i in range(n):
        update_results_json(out_dir, {"task": f"{prefix}{i}", "accuracy": 0.5, "pad": "x" * 2000},
                            {"method": "knowhira", "protocol": "clean"}, ("method", "protocol"))


def test_concurrent_results_json_writers_keep_every_task(tmp_path):
    """Two processes adding tasks to one results.json at once (a barrier starts them together): the
    read-modify-write is locked, so no task is lost (unlocked, each overwrites the other's additions)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, n = ctx.Barrier(2), 40
    procs = [ctx.Process(target=_add_tasks, args=(tmp_path, p, barrier, n)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results["tasks"]) == sorted(f"{p}{i}" for p in "ab" for i in range(n))
    assert sorted(q.name for q in tmp_path.iterdir()) == ["results.json"]  # no lock file or temporary left


def test_results_json_of_another_configuration_written_meanwhile_is_not_overwritten(tmp_path):
    from eval.evaluate import update_results_json
    from utils.errors import BadInput

    update_results_json(tmp_path, {"task": "boolq"}, {"protocol": "clean"}, ("protocol",))
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(BadInput, match="another configuration .protocol 'clean', this one 'hira'"):
        update_results_json(tmp_path, {"task": "piqa"}, {"protocol": "hira"}, ("protocol",))
    assert (tmp_path / "results.json").read_bytes() == before


# ---- 4. damaged model files ------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [100, 1 << 20, 40_000_000])  # 40 MB: the header whole, tensors cut
def test_truncated_gguf_is_one_line(cut, tmp_path, boolq_dir, capsys):
    import os

    real = os.environ.get("KNOWHIRA_SMOLLM2_GGUF")
    if not real or not os.path.isfile(real):
        pytest.skip("KNOWHIRA_SMOLLM2_GGUF does not name the real SmolLM2 GGUF file")
    cut_file = tmp_path / "cut.gguf"
    with open(real, "rb") as f:
        cut_file.write_bytes(f.read(cut))
    rc, err = run_main(["--ckpt", "none", "--model_name", cut_file, "--dataset", "boolq", "--data_dir", boolq_dir,
                        "--max_examples", 2, "--output_folder", tmp_path / "out"], capsys)
    assert rc == 2
    line = one_line(err)
    assert f"{cut_file}: not a complete GGUF file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf"]  # nothing written


@pytest.mark.parametrize("keep", [4, 0.5, -16])  # bytes kept: within the header length, half, all but the end
def test_truncated_safetensors_is_one_line(keep, tmp_path, boolq_dir, gpt2_tokenizer, capsys):
    from conftest import tiny_model

    model_dir = tmp_path / "model"
    tiny_model("gpt2").save_pretrained(str(model_dir))
    gpt2_tokenizer.save_pretrained(str(model_dir))
    weights = model_dir / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(keep if keep > 1 else int(size * keep) if keep > 0 else size + keep)
    rc, err = run_main(["--ckpt", "none", "--model_name", model_dir, "--dataset", "boolq", "--data_dir", boolq_dir,
                        "--max_examples", 2, "--output_folder", tmp_path / "out"], capsys)
    assert rc == 2
    line = one_line(err)
    assert f"{weights}: not a complete safetensors file" in line, line
    assert not (tmp_path / "out").exists()


def test_a_synthetic_gguf_cut_in_its_tensor_data_is_one_line(tmp_path):
    """gguf's own writer: one 64 x 48 tensor, the file cut 1000 bytes short (no real model needed)."""
    from models.get_models import check_gguf
    from tests.robustness.setups import small_gguf
    from utils.errors import BadInput

    path = small_gguf(tmp_path / "m.gguf")
    check_gguf(path)  # whole: no complaint
    size = path.stat().st_size
    assert size >= 64 * 48 * 4
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(BadInput, match=f"^{path}: not a complete GGUF file \\({size - 1000} bytes; truncated"):
        check_gguf(path)


def test_export_merged_onto_a_full_disk_is_one_line_and_leaves_no_temporary_folder(finished_run, tmp_path, capsys):
    """safetensors' writer reports a failed write as SafetensorError, not OSError: it was a traceback. A real
    failed write without root: RLIMIT_FSIZE 64 KiB (EFBIG, SIGXFSZ ignored) makes the merged model's
    model.safetensors fail as a full disk would; exit 1, the export folder named, the temporary folder removed."""
    import resource
    import signal

    out = tmp_path / "disk" / "exported"
    (tmp_path / "disk").mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
        rc, err = run_main(["--ckpt", finished_run, "--export", "merged", "--export_dir", out], capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert rc == 1
    assert one_line(err) == f"error: {out}: File too large"
    assert list((tmp_path / "disk").iterdir()) == []  # no export folder, no .exported.*.tmp


# ---- 5. cloze on a question longer than the model's positions --------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cloze_cuts_a_long_context_from_the_left_and_counts_it(arch, arc_obqa_dir, gpt2_tokenizer, tmp_path):
    """A 24-position model: GPT-2 raised IndexError, Llama ran past its positions. Now the context is cut
    from the left (as lm-eval does), each choice scored like a plain forward pass over the cut sequence,
    and results.json counts the cut examples."""
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config
    from data.cloze import encoded_requests
    from data.protocols import get_protocol
    from eval.evaluate import evaluate_task

    config = tiny_config(arch)
    config.update({"n_positions" if arch == "gpt2" else "max_position_embeddings": 24})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    records = json.loads((arc_obqa_dir / "ARC-Easy" / "test.json").read_text())[:8]
    long = [i for i, r in enumerate(records)
            if max(len(c) + len(x) for c, x in encoded_requests(gpt2_tokenizer, r, "ARC-Easy", i)[0]) > 24]
    assert 0 < len(long) < len(records)  # some cut, some not
    result = evaluate_task(model, gpt2_tokenizer, records, "ARC-Easy", tmp_path, protocol=get_protocol("clean"),
                           mode="cloze", batch_size=4, max_new_tokens=8, beam_size=1, max_examples=None, seed=0,
                           show_progress=False, answer_format="cloze")
    assert result["truncated_prompts"] == len(long) and result["n"] == len(records)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "eval" / "ARC-Easy.jsonl").read_text().splitlines())}
    i = long[0]
    for (context, continuation), score in zip(encoded_requests(gpt2_tokenizer, records[i], "ARC-Easy", i)[0],
                                              rows[i]["scores"]):
        context = context[len(context) + len(continuation) - 24:] if len(context) + len(continuation) > 24 else context
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        expected = sum(logp[len(context) - 1 + k, t].item() for k, t in enumerate(continuation))
        assert score == pytest.approx(expected, abs=1e-4)


# ---- 6. evaluation does not depend on the batch size ------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode,beams", [("generate", 1), ("generate", 3), ("loglik", 1), ("cloze", 1)])
def test_predictions_are_the_same_at_eval_batch_1_and_16(arch, mode, beams, arc_obqa_dir, gpt2_tokenizer, tmp_path,
                                                         threads1):
    """The silent error users of other harnesses keep reporting: padding changes answers. 16 ARC-Easy
    questions of different lengths (left padding for prompts, right padding for scored continuations)."""
    from conftest import tiny_model
    from data.protocols import get_protocol
    from eval.evaluate import evaluate_task

    model = tiny_model(arch, seed=1)
    records = json.loads((arc_obqa_dir / "ARC-Easy" / "test.json").read_text())[:16]
    rows = {}
    for batch in (1, 16):
        evaluate_task(model, gpt2_tokenizer, records, "ARC-Easy", tmp_path / str(batch), protocol=get_protocol("clean"),
                      mode=mode, batch_size=batch, max_new_tokens=6, beam_size=beams, max_examples=None, seed=0,
                      show_progress=False, answer_format="cloze" if mode == "cloze" else "label")
        rows[batch] = [json.loads(x) for x in (tmp_path / str(batch) / "eval" / "ARC-Easy.jsonl").read_text().splitlines()]
    assert len(rows[1]) == len(rows[16]) == 16
    if mode == "generate":
        assert [r["prediction"] for r in rows[1]] == [r["prediction"] for r in rows[16]]
        assert len({r["prediction"] for r in rows[1]}) > 1  # not one constant answer
    else:
        for a, b in zip(rows[1], rows[16]):
            assert a["extracted"] == b["extracted"] and a.get("pred_norm") == b.get("pred_norm")
            assert b["scores"] == pytest.approx(a["scores"], abs=1e-4)
