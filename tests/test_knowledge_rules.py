"""scripts/knowledge_rules.py: the knowledge experiment's pre-registered rules on hand-made results (every
number below is counted by hand: exact McNemar p of n10 wins against n01 losses = 2·P(X <= min) for
X ~ Bin(n10 + n01, 1/2))."""
import json

import pytest

from scripts.knowledge_rules import check_target, choose_format

TASKS = ("ARC-Easy", "ARC-Challenge", "openbookqa")


def write_run(folder, correct: dict[str, list[bool]], correct_norm: dict[str, list[bool]], majority=0.3):
    (folder / "eval").mkdir(parents=True)
    tasks = {}
    for task in TASKS:
        rows = [{"id": i, "correct": c, "correct_norm": cn, "gold": "answer1"}
                for i, (c, cn) in enumerate(zip(correct[task], correct_norm[task]))]
        (folder / "eval" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        tasks[task] = {"task": task, "n": len(rows), "correct": sum(correct[task]),
                       "correct_norm": sum(correct_norm[task]), "majority_accuracy": majority,
                       "predictions_file": f"eval/{task}.jsonl"}
    (folder / "results.json").write_text(json.dumps({"meta": {}, "tasks": tasks}))


N = 100
ZERO = [False] * N  # zero-shot: nothing right
GAIN = {k: [True] * k + [False] * (N - k) for k in (5, 10, 40)}  # k wins, no losses: p = 2 / 2**k


def test_format_rule_counts_passing_tasks_then_mean_delta(tmp_path):
    # text: 40 wins on ARC-Easy (p 1.8e-12, acc 40% > majority 30%), 10 on the others (acc 10% < majority)
    write_run(tmp_path / "text" / "zeroshot", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, ZERO))
    write_run(tmp_path / "text" / "pilot_text",
              {"ARC-Easy": GAIN[40], "ARC-Challenge": GAIN[10], "openbookqa": GAIN[10]}, dict.fromkeys(TASKS, ZERO))
    # cloze on acc_norm: 40 wins on two tasks -> 2 passing tasks (acc, its other metric, would pass none)
    write_run(tmp_path / "cloze" / "zeroshot", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, ZERO))
    write_run(tmp_path / "cloze" / "pilot_cloze", dict.fromkeys(TASKS, ZERO),
              {"ARC-Easy": GAIN[40], "ARC-Challenge": GAIN[40], "openbookqa": GAIN[5]})
    assert choose_format(tmp_path) == 0
    assert (tmp_path / "format").read_text().strip() == "cloze"
    text = (tmp_path / "choice.md").read_text()
    assert "- text: 1 task(s) pass, mean Δ +20.00 points" in text and "- cloze: 2 task(s) pass, mean Δ +28.33" in text
    # a tie (one task each) goes to the larger mean Δ: text's 20.0 over cloze's 15.0
    write_run(tmp_path / "tie" / "cloze" / "zeroshot", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, ZERO))
    write_run(tmp_path / "tie" / "cloze" / "pilot_cloze", dict.fromkeys(TASKS, ZERO),
              {"ARC-Easy": GAIN[40], "ARC-Challenge": GAIN[5], "openbookqa": ZERO})
    (tmp_path / "text").rename(tmp_path / "tie" / "text")
    choose_format(tmp_path / "tie")
    assert (tmp_path / "tie" / "format").read_text().strip() == "text"


def test_target_needs_every_seed_and_the_majority(tmp_path):
    grid = tmp_path / "cloze"
    write_run(grid / "zeroshot", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, ZERO))
    for seed in (1, 2):  # knowhira passes everywhere in both seeds
        write_run(grid / f"knowhira_s{seed}", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, GAIN[40]))
    # lora: seed 2 misses OBQA's p (5 wins: p = 0.0625)
    write_run(grid / "lora_s1", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, GAIN[40]))
    write_run(grid / "lora_s2", dict.fromkeys(TASKS, ZERO), {**dict.fromkeys(TASKS, GAIN[40]), "openbookqa": GAIN[5]})
    assert check_target(grid) == 0
    text = (tmp_path / "target_cloze.md").read_text()
    assert "- knowhira (2 seeds): passes in every seed on ARC-Easy, ARC-Challenge, openbookqa" in text
    assert "- lora (2 seeds): passes in every seed on ARC-Easy, ARC-Challenge\n" in text
    assert text.strip().endswith("**Target met**")
    (grid / "knowhira_s2").rename(tmp_path / "gone")  # lora alone does not meet it; knowhira_s1 does
    check_target(grid)
    assert "**Target met**" in (tmp_path / "target_cloze.md").read_text()
    for seed in (1,):
        write_run(grid / f"x_s{seed}", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, GAIN[40]), majority=0.5)
    check_target(grid)  # 40% is below a 50% majority: x passes nowhere
    assert "- x (1 seeds): passes in every seed on no task" in (tmp_path / "target_cloze.md").read_text()


@pytest.mark.parametrize("wins,p", [(5, 0.0625), (10, 2 / 2**10)])
def test_verdict_p_is_exact_mcnemar(tmp_path, wins, p):
    from scripts.knowledge_rules import verdict

    write_run(tmp_path / "z", dict.fromkeys(TASKS, ZERO), dict.fromkeys(TASKS, ZERO))
    write_run(tmp_path / "r", dict.fromkeys(TASKS, GAIN[wins]), dict.fromkeys(TASKS, ZERO))
    v = verdict(tmp_path / "r", tmp_path / "z", "ARC-Easy", "text")
    assert v["p"] == pytest.approx(p, rel=1e-12) and v["delta"] == pytest.approx(wins / N)
    assert v["passes"] is (p < 0.01 and wins / N > 0.3)
