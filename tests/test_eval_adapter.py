"""--adapter best|final|step_N: evaluation of a chosen state of a run (models/export.py run_state,
load_step_tensors). A checkpoint's trainable tensors on the run's saved structure reproduce final/
exactly at the last step and differ where the weights do. Tiny RANDOMLY INITIALISED GPT-Neo, real boolq."""
import json

import pytest

from conftest import run_main

pytestmark = pytest.mark.usefixtures("single_thread")


def scores(folder) -> list[float]:
    """Every option's score of every question, flat."""
    lines = (folder / "eval" / "boolq.jsonl").read_text().splitlines()
    return [s for line in lines for s in json.loads(line)["scores"]]


@pytest.mark.parametrize("method", ["knowhira", "lora", "kasa", "fft"])
def test_adapter_picks_the_evaluated_state(method, tiny_neo_dir, boolq_dir, tmp_path, capsys):
    run = tmp_path / "runs" / method
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", boolq_dir, "--dataset", "boolq",
                        "--peft_type", method, "--r_ab", "4", "--lr", "3e-2" if method != "fft" else "1e-3",
                        "--max_steps", "4", "--batch", "4", "--val_size", "6", "--eval_steps", "2",
                        "--save_steps", "2", "--keep_checkpoints", "2", "--protocol", "clean",
                        "--output_folder", run.parent, "--run_name", method], capsys)
    assert rc == 0, err

    def evaluate(*adapter):
        out = tmp_path / ("_".join(adapter) or "default")
        rc, err = run_main(["--ckpt", run, "--data_dir", boolq_dir, "--dataset", "boolq", "--eval_mode", "loglik",
                            "--max_examples", "8", *adapter, "--results_dir", out], capsys)
        assert rc == 0, err
        return out

    final, step4, step2 = (evaluate("--adapter", name) for name in ("final", "step_4", "step_2"))
    default = evaluate()
    meta = {p.name: json.loads((p / "results.json").read_text())["meta"]["adapter"]
            for p in (final, step4, step2, default)}
    assert meta == {final.name: "final", step4.name: "step_4", step2.name: "step_2", default.name: "best"}
    assert scores(step4) == pytest.approx(scores(final), abs=1e-5)  # the last checkpoint IS final/
    assert max(abs(a - b) for a, b in zip(scores(step2), scores(final))) > 1e-4
    # best/ was saved at step 2 or 4 (lowest val_loss): its scores are one of those two
    best_step = min((r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val_loss" in r),
                    key=lambda r: r["val_loss"])["step"]
    assert scores(default) == pytest.approx(scores(step2 if best_step == 2 else step4), abs=1e-5)


def test_adapter_errors_are_one_line(tiny_neo_dir, boolq_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", boolq_dir, "--dataset", "boolq",
                        "--peft_type", "hira", "--r_ab", "4", "--max_steps", "2", "--batch", "4", "--val_size", "0",
                        "--save_steps", "1", "--keep_checkpoints", "1", "--output_folder", run.parent,
                        "--run_name", "r"], capsys)
    assert rc == 0, err
    base = ["--ckpt", run, "--data_dir", boolq_dir, "--dataset", "boolq", "--results_dir", tmp_path / "out"]
    rc, err = run_main([*base, "--adapter", "step_1"], capsys)  # only the newest checkpoint is kept
    assert rc == 2 and err.strip() == (f"error: --adapter step_1: no checkpoint {run / 'checkpoints' / 'step_000001'} "
                                       "(kept: step_000002)")
    rc, err = run_main([*base, "--adapter", "last"], capsys)
    assert rc == 2 and "--adapter: must be best, final or step_N" in err and len(err.strip().splitlines()) == 1
    rc, err = run_main(["--ckpt", "none", "--model_name", tiny_neo_dir, "--data_dir", boolq_dir, "--dataset", "boolq",
                        "--adapter", "final"], capsys)
    assert rc == 2 and "--ckpt none is the base model" in err
    config = run / "final" / "knowhira_adapter.json"  # an edited rank: one line, not a copy_ traceback
    config.write_text(config.read_text().replace('"r_ab": 4', '"r_ab": 3'))
    rc, err = run_main([*base, "--adapter", "final"], capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith(f"error: {run / 'final' / 'knowhira_adapter.safetensors'}: ") and \
        "has shape (4, " in line and "has (3, " in line and "an edited config" in line, line
    assert not (tmp_path / "out").exists()


def test_one_results_json_holds_one_configuration(tiny_neo_dir, boolq_dir, tmp_path, capsys):
    """A second evaluation of another state (or of the base model) into the same results folder is refused
    before anything is written: results.json's meta describes every task in it."""
    run = tmp_path / "runs" / "r"
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", boolq_dir, "--dataset", "boolq",
                        "--peft_type", "hira", "--r_ab", "4", "--max_steps", "2", "--batch", "4", "--val_size", "0",
                        "--save_steps", "1", "--output_folder", run.parent, "--run_name", "r"], capsys)
    assert rc == 0, err
    out = tmp_path / "out"
    base = ["--data_dir", boolq_dir, "--dataset", "boolq", "--eval_mode", "loglik", "--max_examples", "4",
            "--results_dir", out]
    rc, err = run_main(["--ckpt", run, "--adapter", "final", *base], capsys)
    assert rc == 0, err
    before = (out / "results.json").read_bytes()
    rc, err = run_main(["--ckpt", run, "--adapter", "step_1", *base], capsys)
    assert rc == 2 and err.strip().splitlines()[-1] == (
        f"error: {out / 'results.json'} holds evaluations of another configuration (adapter 'final', this one "
        "'step_1'); evaluate into another --results_dir")
    rc, err = run_main(["--ckpt", "none", "--model_name", tiny_neo_dir, *base], capsys)
    assert rc == 2 and "(method 'hira', this one 'zero-shot')" in err
    assert (out / "results.json").read_bytes() == before
    rc, err = run_main(["--ckpt", run, "--adapter", "final", *base], capsys)  # the same again: replaced in place
    assert rc == 0, err


def test_every_requested_task_is_checked_before_anything_is_written(tiny_neo_dir, arc_obqa_dir, tmp_path, capsys):
    """--dataset openbookqa,hellaswag where hellaswag has no test file: one line naming it, and openbookqa is
    not evaluated first (it used to be written, then the run stopped)."""
    out = tmp_path / "out"
    rc, err = run_main(["--ckpt", "none", "--model_name", tiny_neo_dir, "--data_dir", arc_obqa_dir,
                        "--dataset", "openbookqa,hellaswag", "--eval_mode", "cloze", "--results_dir", out], capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith("error: ") and "hellaswag" in line and "test.json" in line, line
    assert not out.exists()
