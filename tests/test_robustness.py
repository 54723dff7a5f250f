"""Issue #13: every bad input a one-line error with nothing left behind, explicit resume, checkpoints
that never hold NaN. One test per case of tests/robustness/cases.py's table (the probe and these
tests are one source): each case runs train_knowhira.py as its own process on tiny RANDOM Llama
models and 40-record copies of the real data files, and asserts the exit status (2 bad input, 3
non-finite training, 130 Ctrl-C, 1 a full disk, 0 where the run goes on; SIGTERM and SIGKILL kill),
one message line on stderr naming the problem and the file or flag (no traceback), and the scratch
folder's listing and bytes before and after (nothing new, or exactly what the case promises: e.g.
after Ctrl-C, SIGTERM or SIGKILL, --resume finishes with the uninterrupted run's losses). The probe
runs once per session (one subprocess, the selected cases only, two at a time); then in-process
checks of the pieces."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.robustness.cases import BY_NAME, CASES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe(request, tmp_path_factory):
    """Run the probe on the cases selected in this session; its report, cases by name."""
    for var in ("KNOWHIRA_DATA_DIR", "KNOWHIRA_TOKENIZER_DIR"):
        if not os.environ.get(var) or not Path(os.environ[var]).is_dir():
            pytest.skip(f"{var} is not set to an existing folder (scripts/test.sh sets it)")
    names = [item.callspec.params["case"] for item in request.session.items
             if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    out = tmp_path_factory.mktemp("probe") / "report.json"
    proc = subprocess.run([sys.executable, "-m", "tests.robustness", "--json", str(out),  # from the root
                           "--cases", ",".join(names or ["unknown_flag"])], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    if not out.is_file():
        pytest.fail(f"the probe did not report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads(out.read_text())
    report["by_name"] = {o["name"]: o for o in report["cases"]}
    return report


@pytest.mark.parametrize("case", [pytest.param(c.name, id=f"item{c.defect}-{c.name}") for c in CASES])
def test_case(case, probe):
    c, o = BY_NAME[case], probe["by_name"][case]
    detail = f"{case} ({c.what}): {o['problems']}\nmessage: {o['message']}\nstderr:\n{o['stderr'][-2500:]}"
    assert o["rc"] == c.exit, detail
    assert not o["traceback"], detail
    assert o["problems"] == [], detail


def test_imports_print_nothing(probe):
    """The fork mode imports the libraries once: whatever they print would show in every real run."""
    assert probe["import_stderr"].strip() == ""


def test_cases_cover_every_item_of_the_issue():
    assert {c.defect for c in CASES} >= {str(i) for i in range(1, 17)}
    assert len(CASES) >= 40


# ---- in-process checks of the pieces --------------------------------------------------------------
def test_atomic_write_names_the_file_on_a_full_disk(tmp_path, monkeypatch):
    """A write(2) error names no file; atomic writes add the file they were writing (simulated ENOSPC)."""
    import utils.atomic as atomic

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError) as e:
        atomic.atomic_write_path(tmp_path / "args.json", full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "args.json")
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_torch_save_names_the_file_when_the_write_fails(tmp_path, monkeypatch):
    """torch.save reports a failed write as RuntimeError('unexpected pos ...'): save_torch gives the
    file system's OSError naming the file instead."""
    import torch

    import training.checkpoint as checkpoint

    class Full:
        def __init__(self, *a, **k):
            self.n = 0

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def fileno(self):
            return 0

        def close(self):
            pass
    monkeypatch.setattr(checkpoint, "open", lambda *a, **k: Full(), raising=False)  # the module's open()
    with pytest.raises(OSError) as e:
        checkpoint.save_torch({"x": torch.zeros(1000)}, tmp_path / "state.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "state.pt")


def test_finite_check_of_float_options_covers_float32_overflow():
    from training.loop import LoopConfig

    with pytest.raises(ValueError, match=r"^lr: must be a finite number, got 1e\+39"):
        LoopConfig(lr=1e39)
    assert LoopConfig(lr=1e30).lr == 1e30


def test_record_place_names_file_and_index(tmp_path):
    from data.commonsense import load_train_data, record_place

    for task in ("boolq", "openbookqa"):
        (tmp_path / task).mkdir()
        (tmp_path / task / "train.json").write_text(json.dumps(
            [{"instruction": f"{task} {i}", "input": "", "output": "x"} for i in range(3)]))
    records = load_train_data(tmp_path, "mix:boolq,openbookqa")
    assert record_place(tmp_path, "mix:boolq,openbookqa", records, records[4]) == \
        f"{tmp_path / 'openbookqa' / 'train.json'} record 1"
    single = load_train_data(tmp_path, "boolq")
    assert record_place(tmp_path, "boolq", single, single[2]) == f"{tmp_path / 'boolq' / 'train.json'} record 2"


def test_eval_prompts_are_cut_from_the_left_keeping_bos(gpt2_tokenizer):
    """Evaluation cuts an over-long protocol prompt as training does: from the left, keeping the
    leading BOS, so the question's end and "### Response:" stay; room = positions − new tokens."""
    from types import SimpleNamespace

    from data.protocols import get_protocol
    from eval.evaluate import fit_prompt, prompt_room

    protocol = get_protocol("hira")
    record = {"instruction": "Is it so? " * 400 + "Answer true or false.", "input": "", "output": "", "answer": "true"}
    ids = protocol.eval_prompt_ids(gpt2_tokenizer, record)
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    room = prompt_room(model, gpt2_tokenizer, "generate", 16)
    assert room == 496 and len(ids) > room
    cut = fit_prompt(ids, room, gpt2_tokenizer.bos_token_id)
    assert len(cut) == room and cut[0] == ids[0] == gpt2_tokenizer.bos_token_id
    assert cut[1:] == ids[len(ids) - room + 1:]
    assert gpt2_tokenizer.decode(cut).endswith("Answer true or false.\n\n### Response:\n")
    assert fit_prompt(ids[:10], room, gpt2_tokenizer.bos_token_id) == ids[:10]  # short prompts unchanged
    loglik = prompt_room(model, gpt2_tokenizer, "loglik", 16, ["true", "false"])
    assert loglik == 512 - len(gpt2_tokenizer("the correct answer is false", add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match="--max_new_tokens 511 leaves no room"):
        prompt_room(model, gpt2_tokenizer, "generate", 511)


@pytest.mark.parametrize("mode", ["generate", "loglik"])
def test_an_over_long_test_question_is_cut_and_counted(mode, data_dir, gpt2_tokenizer, tmp_path, single_thread):
    """On GPT-Neo (learned positions: a longer input indexes past its position table) a test question
    longer than the model's positions is cut, evaluated, and counted in the task result."""
    from conftest import tiny_model
    from data.protocols import get_protocol
    from eval.evaluate import evaluate_task, load_test_records

    records = load_test_records(data_dir, "ARC-Easy")[:4]
    records[1] = {**records[1], "instruction": "Why? " * 700 + records[1]["instruction"]}
    result = evaluate_task(tiny_model("gpt_neo"), gpt2_tokenizer, records, "arc-e", tmp_path,
                           protocol=get_protocol("hira"), mode=mode, batch_size=4, max_new_tokens=4,
                           beam_size=1, max_examples=None, seed=0, show_progress=False, answer_format="label")
    assert result["n"] == 4 and result["truncated_prompts"] == 1


def test_no_pickle_load_without_weights_only():
    """Every torch.load in the project's code reads tensors and plain containers only."""
    import re

    calls = []
    for path in ROOT.rglob("*.py"):
        if any(part in (".venv", "tests") for part in path.relative_to(ROOT).parts):
            continue
        for line in path.read_text().splitlines():
            if re.search(r"\btorch\.load\(", line):
                calls.append((path.name, line.strip()))
    assert calls and all("weights_only=True" in line for _, line in calls), calls


def test_a_checkpoint_whose_next_step_is_not_finite_is_not_kept_as_good(tmp_path, data_dir, gpt2_tokenizer,
                                                                       monkeypatch, single_thread):
    """Resuming from the checkpoint of step k when step k+1 is not finite would stop again at once:
    that checkpoint is removed and `latest` names the one before; a resumed run whose only state it is
    keeps it, saying so."""
    from accelerate import Accelerator

    import training.loop as loop
    from conftest import tiny_model
    from data.commonsense import load_train_data
    from data.tokenize import tokenize_record
    from models.methods import build
    from models.methods.knowhira import KnowHiRAConfig
    from training.checkpoint import latest_checkpoint
    from training.loop import LoopConfig, NonFiniteLoss, Trainer

    features = [tokenize_record(gpt2_tokenizer, r, 128, False) for r in load_train_data(data_dir, "boolq")[:24]]
    real = loop.task_loss_sum

    def run(nan_at_call: int, **kw):
        calls = []

        def poisoned(model, batch, head=None):
            loss, n = real(model, batch, head)
            calls.append(1)
            return (loss * float("nan") if len(calls) == nan_at_call else loss), n
        monkeypatch.setattr(loop, "task_loss_sum", poisoned)
        cfg = KnowHiRAConfig(r_ab=4, target_modules=["q_proj", "v_proj"])
        model = build(tiny_model("gpt_neo"), cfg)
        settings = LoopConfig(**{"batch": 2, "lr": 1e-2, "save_steps": 1, "eval_strategy": "no", "max_steps": 8, **kw})
        with pytest.raises(NonFiniteLoss) as e:
            Trainer(Accelerator(cpu=True), model, gpt2_tokenizer, features, [], settings, tmp_path,
                    lambda m, d, write: None).run()
        return str(e.value)

    root = tmp_path / "checkpoints"
    message = run(4, keep_checkpoints=3)  # steps 1-3 fine and saved; step 4 NaN
    assert "at step 4; step_000003 was removed (step 4 is not finite from it)" in message
    assert f"the last good checkpoint is {root / 'step_000002'}" in message
    assert latest_checkpoint(root).name == "step_000002" and not (root / "step_000003").exists()
    message = run(2, keep_checkpoints=1)  # resumed at 2: step 3 saved (step 2 rotated away), step 4 NaN
    assert "step_000003 cannot be continued from (step 4 is not finite from it); no other checkpoint" in message
    assert latest_checkpoint(root).name == "step_000003"
