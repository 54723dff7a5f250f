"""scripts/sweep_table.py: the showcase's sweep table (chosen rates) and main-run learning curves
(mean ± std over seeds, hours of training and evaluation), on hand-written run folders."""
import json

import pytest

from scripts import sweep_table


def make_run(folder, name, method, lr, seed, val_accs, *, step_s=3.0, last_loss=0.2, finished=True):
    """A run folder: args.json, log.jsonl with validation at steps 0, 40, ... and a step every 3 s."""
    run = folder / name
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"peft_type": method, "lr": lr, "seed": seed}))
    def val(i):
        return {"val_acc": val_accs[i], "val_loss": last_loss + 0.1 * (len(val_accs) - 1 - i)}
    lines = [{"step": 0, **val(0)}]  # before training: no step time
    for step in range(1, 40 * (len(val_accs) - 1) + 1):
        lines.append({"step": step, "loss_task": 1.0, "time": 1000.0 + step_s * step,
                      **(val(step // 40) if step % 40 == 0 else {})})
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if finished:
        (run / "train_summary.json").write_text("{}")
    return run


def write_results(folder, kind, run, seconds):
    out = folder / kind / run
    out.mkdir(parents=True)
    tasks = {f"t{i}": {"accuracy": 0.5, "seconds": s} for i, s in enumerate(seconds)}
    (out / "results.json").write_text(json.dumps({"meta": {}, "tasks": tasks}))


def test_sweep_chooses_best_accuracy_then_lower_loss(tmp_path, capsys):
    make_run(tmp_path, "sweep_lora_lr1e-3", "lora", 1e-3, 1, [0.3, 0.5], last_loss=0.30)
    make_run(tmp_path, "sweep_lora_lr3e-3", "lora", 3e-3, 1, [0.3, 0.5], last_loss=0.25)  # tie: lower loss
    make_run(tmp_path, "sweep_hira_lr1e-3", "hira", 1e-3, 1, [0.3, 0.6])
    make_run(tmp_path, "sweep_hira_lr1e-2", "hira", 1e-2, 1, [0.3, 0.7], finished=False)  # unfinished: never chosen
    out = tmp_path / "t" / "sweep.md"
    assert sweep_table.main([str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LR_lora=0.003" in printed and "LR_hira=0.001" in printed
    rows = {line.split(" | ")[0].strip("| ") + " " + line.split(" | ")[1]: line for line in out.read_text().splitlines()[2:]}
    assert rows["lora 0.003"].endswith("**chosen** |") and not rows["lora 0.001"].endswith("**chosen** |")
    assert rows["hira 0.01"].endswith("(unfinished) |")
    assert "| 3.00 |" in rows["hira 0.001"]  # median step time
    assert out.with_suffix(".png").stat().st_size > 0


def test_main_runs_mean_std_over_seeds_and_hours(tmp_path):
    make_run(tmp_path, "knowhira_s1", "knowhira", 3e-3, 1, [0.3, 0.4, 0.5])
    make_run(tmp_path, "knowhira_s2", "knowhira", 3e-3, 2, [0.3, 0.6, 0.5], step_s=5.0)
    make_run(tmp_path, "hira_s1", "hira", 1e-3, 1, [0.3, 0.45, 0.55])
    make_run(tmp_path, "hira_s2", "hira", 1e-3, 2, [0.3, 0.5], finished=False)  # unfinished: left out
    make_run(tmp_path, "sweep_hira_lr1e-3", "hira", 1e-3, 1, [0.3, 0.9])  # the sweep: left out
    write_results(tmp_path, "text", "knowhira_s1", [1800.0, 1800.0])
    write_results(tmp_path, "cloze", "knowhira_s2", [3600.0])
    write_results(tmp_path, "text", "zeroshot", [900.0, 900.0])
    out = tmp_path / "main_curves.md"
    assert sweep_table.main([str(tmp_path), "--main", "--out", str(out)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.read_text().splitlines()[2:]}
    assert set(rows) == {"hira", "knowhira", "zeroshot", "**total**"}
    k = rows["knowhira"]
    assert k[3] == "1,2"
    # @40: 40 and 60 -> mean 50.0, sample std 14.1; best: 0.5 and 0.6 -> 55.0 ± 7.1
    assert k[5] == "50.0 ± 14.1" and k[6] == "50.0 ± 0.0" and k[7] == "55.0 ± 7.1"
    assert k[8] == "4.00"  # median of the seeds' median step times (3 s, 5 s)
    # training: 79 steps x 3 s + 79 x 5 s = 632 s; evaluation 3600 + 3600 s
    assert k[9] == f"{632 / 3600:.2f}" and k[10].strip(" |") == "2.00"
    assert rows["hira"][3] == "1" and rows["hira"][7] == "55.0"
    assert rows["zeroshot"][-1].strip(" |") == "0.50"
    assert rows["**total**"][-1].strip(" |") == "**2.50**"
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("flags", [[], ["--main"]])
def test_no_runs_is_a_one_line_error(tmp_path, capsys, flags):
    assert sweep_table.main([str(tmp_path), "--out", str(tmp_path / "x.md"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no ") and str(tmp_path) in err and "\n" not in err
    assert not (tmp_path / "x.md").exists()
