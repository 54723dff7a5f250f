"""Paired tests and seed aggregation (analysis/paired.py, analyze_results.py --baseline/--compare):
numbers computed by hand (or with scipy, a dev-only reference) on constructed predictions; no model."""
import csv
import itertools
import json
import math

import pytest

import analyze_results
from analysis import report
from analysis.paired import (PairingError, Predictions, agresti_min_interval, format_p, load_predictions,
                             mcnemar_exact_p, mean_std, paired_difference, seedless_name, sign_flip_p)
from eval.metrics import wilson_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ helpers

def preds(correct: list[int], ids=None) -> Predictions:
    ids = list(range(len(correct))) if ids is None else ids
    return Predictions({i: bool(c) for i, c in zip(ids, correct)}, {i: "true" for i in ids})


def make_run(folder, meta: dict, tasks: dict) -> None:
    """A run folder as evaluation writes it: results.json and eval/<task>.jsonl.
    tasks: {task: correct list (ids 0..n-1) or (ids, correct list)}."""
    (folder / "eval").mkdir(parents=True)
    results = {"meta": meta, "tasks": {}}
    for task, spec in tasks.items():
        ids, correct = spec if isinstance(spec, tuple) else (list(range(len(spec))), spec)
        n, k = len(ids), sum(correct)
        lo, hi = wilson_interval(k, n)
        results["tasks"][task] = {"task": task, "mode": "generate", "n": n, "correct": k, "accuracy": k / n,
                                  "ci95_low": lo, "ci95_high": hi, "chance_accuracy": 0.5,
                                  "majority_accuracy": 0.6, "max_examples": None, "seed": 42,
                                  "max_new_tokens": 4, "beam_size": 1, "predictions_file": f"eval/{task}.jsonl"}
        lines = [json.dumps({"id": i, "prediction": "x", "extracted": "true", "gold": "true", "correct": bool(c)})
                 for i, c in zip(ids, correct)]
        (folder / "eval" / f"{task}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "results.json").write_text(json.dumps(results))


def trained_meta(seed, method="knowhira", lr=0.001, adapter="best"):
    return {"method": method, "model_name": "tiny-model", "adapter": adapter, "trainable_params": 1234,
            "r_ab": 4, "lr": lr, "max_steps": 2, "dataset": "boolq", "seed": seed, "eval_mode": "generate",
            "max_examples": None}


ZERO_SHOT_META = {"method": "zero-shot", "model_name": "tiny-model", "trainable_params": 0,
                  "eval_mode": "generate", "max_examples": None}


def read_csv(path) -> dict:
    with open(path, newline="") as handle:
        return {row["label"]: row for row in csv.DictReader(handle)}


def brute_force_sign_flip(diffs: list[float]) -> float:
    """P(|Σ ε_i d_i| >= |Σ d_i|) by enumerating every sign vector (the definition)."""
    nonzero = [d for d in diffs if d != 0]
    observed = abs(sum(nonzero))
    hits = sum(abs(sum(s * d for s, d in zip(signs, nonzero))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(nonzero)))
    return hits / 2 ** len(nonzero)


# ---------------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("n01, n10, by_hand", [
    (2, 8, 2 * (1 + 10 + 45) / 2 ** 10),  # n = 10, min = 2: 2·(C(10,0)+C(10,1)+C(10,2))/2^10
    (8, 2, 2 * (1 + 10 + 45) / 2 ** 10),  # symmetric
    (0, 5, 2 * 1 / 2 ** 5),
    (1, 12, 2 * (1 + 13) / 2 ** 13),
    (3, 3, 1.0),  # balanced: 2·P(X <= n/2) > 1, capped
    (0, 0, 1.0),  # no discordant pair
    (0, 1, 1.0),
])
def test_mcnemar_exact_p_by_hand(n01, n10, by_hand):
    assert mcnemar_exact_p(n01, n10) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("n01, n10", [(2, 8), (0, 5), (1, 12), (7, 7), (40, 61), (130, 170), (0, 1), (998, 1040)])
def test_mcnemar_exact_p_matches_scipy_binomtest(n01, n10):
    stats = pytest.importorskip("scipy.stats")
    reference = stats.binomtest(min(n01, n10), n01 + n10, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact_p(n01, n10) == pytest.approx(reference, rel=1e-9, abs=1e-300)


def test_agresti_min_interval_by_hand():
    # n = 20 examples: 5 where A is right and B wrong, 1 the reverse, 14 concordant
    diffs = [1] * 5 + [-1] * 1 + [0] * 14
    low, high, se = agresti_min_interval(diffs)
    # Agresti-Min (add 0.5 to each cell): (b - c)/(n+2) ± 1.96·sqrt((b+c+1) - (b-c)²/(n+2))/(n+2)
    mid = 4 / 22
    se_hand = math.sqrt(7 - 16 / 22) / 22
    assert se == pytest.approx(se_hand, rel=1e-12)
    assert (low, high) == pytest.approx((mid - 1.96 * se_hand, mid + 1.96 * se_hand), rel=1e-12)
    assert (low, high) == pytest.approx((-0.041314, 0.404950), abs=1e-6)  # the numbers, written out
    # no discordant pair: not the empty [0, 0] of the plain Wald interval; ±1.96·sqrt(1/12 / 12)
    low, high, _ = agresti_min_interval([0] * 10)
    assert (low, high) == pytest.approx((-1.96 / 12, 1.96 / 12), rel=1e-12)


def test_agresti_min_interval_is_close_to_plain_wald_for_large_n():
    diffs = [1] * 60 + [-1] * 40 + [0] * 900
    low, high, _ = agresti_min_interval(diffs)
    mean = sum(diffs) / 1000
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 999)
    assert low == pytest.approx(mean - 1.96 * sd / math.sqrt(1000), abs=2e-4)
    assert high == pytest.approx(mean + 1.96 * sd / math.sqrt(1000), abs=2e-4)


def test_paired_difference_single_seeds():
    a = preds([1, 1, 1, 1, 1, 1, 0, 0, 1, 0])  # 7/10
    b = preds([1, 0, 0, 0, 1, 1, 0, 1, 1, 0])  # 5/10; A right & B wrong: ids 1, 2, 3; reverse: id 7
    d = paired_difference([a], [b])
    assert (d.n, d.a_better, d.b_better) == (10, 3, 1)
    assert (d.acc_a, d.acc_b, d.delta) == pytest.approx((0.7, 0.5, 0.2))
    assert d.p == pytest.approx(2 * (1 + 4) / 2 ** 4) and d.p_test == "exact McNemar"  # n = 4, min = 1
    se = math.sqrt(5 - 4 / 12) / 12
    assert (d.low, d.high) == pytest.approx((2 / 12 - 1.96 * se, 2 / 12 + 1.96 * se))


def test_paired_difference_refuses_different_ids():
    with pytest.raises(PairingError, match="same examples"):
        paired_difference([preds([1, 0, 1])], [preds([1, 0, 1], ids=[0, 1, 5])])


def test_sign_flip_equals_mcnemar_on_integer_differences():
    p, test_used = sign_flip_p([1] * 8 + [-1] * 2 + [0] * 30)
    assert test_used == "exact sign-flip"
    assert p == pytest.approx(mcnemar_exact_p(2, 8), rel=1e-12) == pytest.approx(0.109375)


def test_sign_flip_exact_on_fractional_differences_and_monte_carlo():
    weights = [3, 1, 2, -1, 2, 3, 1, 0, 2, -3, 1, 2]  # d_i in units of 1/3 (3 seeds vs 1)
    exact = brute_force_sign_flip(weights)
    p, test_used = sign_flip_p(weights)
    assert test_used == "exact sign-flip" and p == pytest.approx(exact, rel=1e-12)
    assert 0.01 < exact < 0.2  # a non-trivial case
    p_mc, test_used = sign_flip_p(weights, exact_limit=0, draws=20_000, seed=0)
    assert test_used == "MC sign-flip (20000 draws)"
    assert p_mc == pytest.approx(exact, abs=0.01)
    assert p_mc == sign_flip_p(weights, exact_limit=0, draws=20_000, seed=0)[0]  # seeded: reproducible
    assert format_p(p_mc, test_used).endswith(", MC")


def test_paired_difference_three_seeds_vs_one():
    seeds = [preds([1, 1, 0, 1, 0, 1, 1, 0]), preds([1, 0, 0, 1, 1, 1, 1, 0]), preds([1, 1, 0, 0, 1, 1, 1, 1])]
    base = preds([0, 1, 0, 1, 0, 0, 1, 0])
    d = paired_difference(seeds, [base])
    # per-example mean over seeds a_i, minus b_i
    a = [1, 2 / 3, 0, 2 / 3, 2 / 3, 1, 1, 1 / 3]
    diffs = [ai - bi for ai, bi in zip(a, [0, 1, 0, 1, 0, 0, 1, 0])]  # 1, -1/3, 0, -1/3, 2/3, 1, 0, 1/3
    assert d.delta == pytest.approx(sum(diffs) / 8) == pytest.approx((16 / 3 - 3) / 8)
    assert (d.a_better, d.b_better) == (4, 2)
    assert d.p_test == "exact sign-flip" and d.p == pytest.approx(brute_force_sign_flip(diffs), rel=1e-12)
    n_star = 10
    mid = sum(diffs) / n_star
    se = math.sqrt(((sum(x * x for x in diffs) + 1) / n_star - mid ** 2) / n_star)
    assert (d.low, d.high) == pytest.approx((mid - 1.96 * se, mid + 1.96 * se))


def test_mean_std_is_the_sample_std():
    mean, std = mean_std([0.6, 0.7, 0.9])
    assert mean == pytest.approx(22 / 30)
    assert std == pytest.approx(math.sqrt(21) / 30)  # deviations -4/30, -1/30, 5/30; 42/900 / (3-1)
    assert mean_std([0.5]) == (0.5, None)


def test_seedless_name():
    assert seedless_name("knowhira_SmolLM2_lr0.001_s42_20250101-120000-1234", 42) == "knowhira_SmolLM2_lr0.001"
    assert seedless_name("hira-r8-seed3", 3) == "hira-r8"
    assert seedless_name("hira_seed=3_r8", 3) == "hira_r8"
    assert seedless_name("hira_s13", 1) == "hira_s13"  # s13 is not seed 1
    assert seedless_name("s1", 1) == ""


def test_load_predictions_checks_results_json(tmp_path):
    make_run(tmp_path / "r", trained_meta(1), {"boolq": [1, 0, 1]})
    result = json.loads((tmp_path / "r" / "results.json").read_text())["tasks"]["boolq"]
    assert load_predictions(tmp_path / "r", "boolq", result).correct == {0: True, 1: False, 2: True}
    with pytest.raises(PairingError, match="n=4"):
        load_predictions(tmp_path / "r", "boolq", {**result, "n": 4})
    with pytest.raises(PairingError, match="no predictions file"):
        load_predictions(tmp_path / "r", "piqa")


# ---------------------------------------------------------------------------------------- CLI

SEED_CORRECT = {  # boolq, 10 examples; accuracies 0.6, 0.7, 0.9
    1: [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    2: [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    3: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
}
ZERO_SHOT_CORRECT = [1, 0, 1, 0, 1, 0, 1, 0, 0, 0]  # 0.4
PIQA = {1: [1, 0, 1, 1], 2: [1, 1, 1, 1], 3: [0, 0, 1, 1]}  # 0.75, 1.0, 0.5
ZERO_SHOT_PIQA = [1, 0, 0, 1]


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed in (3, 1, 2):
        make_run(root / f"knowhira_tiny_lr0.001_s{seed}_2025010{seed}-120000-99", trained_meta(seed),
                 {"boolq": SEED_CORRECT[seed], "piqa": PIQA[seed]})
    make_run(root / "zeroshot_tiny", ZERO_SHOT_META, {"boolq": ZERO_SHOT_CORRECT, "piqa": ZERO_SHOT_PIQA})
    make_run(root / "hira_tiny", trained_meta(1, method="hira"),
             {"boolq": [1, 1, 1, 1, 0, 0, 1, 0, 1, 0], "piqa": [1, 1, 0, 1]})
    return root


def test_cli_seed_group_and_baseline(runs, tmp_path, capsys):
    out = tmp_path / "summary"
    assert analyze_results.main([str(runs), "--out", str(out), "--baseline", "zeroshot_tiny"]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out / "summary.csv")
    assert set(rows) == {"knowhira_tiny_lr0.001", "zeroshot_tiny", "hira_tiny", "chance", "majority"}
    group = rows["knowhira_tiny_lr0.001"]
    assert (group["n_seeds"], group["seeds"]) == ("3", "1;2;3")
    assert float(group["boolq_accuracy"]) == pytest.approx(22 / 30)
    assert float(group["boolq_std"]) == pytest.approx(math.sqrt(21) / 30)
    assert [float(v) for v in group["boolq_per_seed"].split(";")] == [0.6, 0.7, 0.9]
    assert float(group["piqa_std"]) == pytest.approx(0.25)  # 0.75, 1.0, 0.5
    # the average over the common tasks, per seed: (0.6+0.75)/2, (0.7+1)/2, (0.9+0.5)/2
    per_seed_avg = [0.675, 0.85, 0.7]
    assert float(group["avg_common"]) == pytest.approx(sum(per_seed_avg) / 3)
    assert float(group["avg_common_std"]) == pytest.approx(mean_std(per_seed_avg)[1])
    # the group's interval over examples: seed-averaged correctness a_i, mean ± 1.96·sd/√10
    a = [sum(SEED_CORRECT[s][i] for s in (1, 2, 3)) / 3 for i in range(10)]
    m, sd = mean_std(a)
    assert float(group["boolq_ci95_low"]) == pytest.approx(m - 1.96 * sd / math.sqrt(10))
    assert "73.3 ± 15.3 (3 seeds)" in printed

    # Δ vs the zero-shot baseline uses every seed: d_i = a_i − b_i
    diffs = [ai - bi for ai, bi in zip(a, ZERO_SHOT_CORRECT)]
    assert float(group["boolq_delta"]) == pytest.approx(22 / 30 - 0.4)
    assert float(group["boolq_p"]) == pytest.approx(brute_force_sign_flip(diffs), rel=1e-9)
    assert group["boolq_p_test"] == "exact sign-flip"
    mid = sum(diffs) / 12
    se = math.sqrt(((sum(x * x for x in diffs) + 1) / 12 - mid ** 2) / 12)
    assert float(group["boolq_delta_lo"]) == pytest.approx(mid - 1.96 * se)
    assert float(group["boolq_delta_hi"]) == pytest.approx(mid + 1.96 * se)
    # a single run against the baseline: exact McNemar on its discordant pairs
    hira = rows["hira_tiny"]
    # hira [1,1,1,1,0,0,1,0,1,0] vs zero-shot [1,0,1,0,1,0,1,0,0,0]: hira-only ids 1, 3, 8; zero-shot-only 4
    assert float(hira["boolq_delta"]) == pytest.approx(0.6 - 0.4)
    assert float(hira["boolq_p"]) == pytest.approx(2 * (1 + 4) / 2 ** 4) and hira["boolq_p_test"] == "exact McNemar"
    assert float(hira["boolq_n_paired"]) == 10
    assert rows["zeroshot_tiny"]["boolq_delta"] == "" and rows["zeroshot_tiny"]["baseline"] == "zeroshot_tiny"
    md = (out / "summary.md").read_text()
    assert "## Paired differences vs zeroshot_tiny" in md and "Agresti–Min" in md and "Wilson" in md
    assert "| hira_tiny | +20.0 [" in md and "(p=0.62)" in md  # 2·(1+4)/2^4 = 0.625
    for task in ("boolq", "piqa"):
        assert (out / f"{task}.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_compare_writes_a_table(runs, tmp_path):
    out = tmp_path / "summary"
    hira = runs / "hira_tiny"
    assert analyze_results.main([str(runs), "--out", str(out), "--compare", str(hira), "zeroshot_tiny"]) == 0
    with open(out / "compare_hira_tiny_vs_zeroshot_tiny.csv", newline="") as handle:
        rows = {row["task"]: row for row in csv.DictReader(handle)}
    assert float(rows["boolq"]["delta"]) == pytest.approx(0.2)
    assert float(rows["boolq"]["p"]) == pytest.approx(2 * (1 + 4) / 2 ** 4)
    assert (rows["boolq"]["a_better"], rows["boolq"]["b_better"]) == ("3", "1")
    # piqa: hira [1,1,0,1] vs zero-shot [1,0,0,1]: one discordant pair, p = 1
    assert float(rows["piqa"]["delta"]) == pytest.approx(0.25) and float(rows["piqa"]["p"]) == 1.0
    se_boolq = math.sqrt(5 - 4 / 12) / 12
    se_piqa = math.sqrt(2 - 1 / 6) / 6
    assert float(rows["avg"]["delta"]) == pytest.approx((0.2 + 0.25) / 2)
    assert float(rows["avg"]["delta_lo"]) == pytest.approx(0.225 - 1.96 * math.hypot(se_boolq, se_piqa) / 2)
    assert "exact McNemar" in (out / "compare_hira_tiny_vs_zeroshot_tiny.md").read_text()

    # a seed member's folder selects its group's row, which compares with every seed
    member = next(runs.glob("knowhira_tiny_lr0.001_s2_*"))
    assert analyze_results.main([str(runs), "--out", str(out), "--compare", str(member), "hira_tiny"]) == 0
    with open(out / "compare_knowhira_tiny_lr0.001_vs_hira_tiny.csv", newline="") as handle:
        boolq = next(row for row in csv.DictReader(handle) if row["task"] == "boolq")
    a = [sum(SEED_CORRECT[s][i] for s in (1, 2, 3)) / 3 for i in range(10)]
    diffs = [ai - bi for ai, bi in zip(a, [1, 1, 1, 1, 0, 0, 1, 0, 1, 0])]
    assert (boolq["a_seeds"], boolq["b_seeds"]) == ("3", "1")
    assert float(boolq["delta"]) == pytest.approx(22 / 30 - 0.6)
    assert float(boolq["p"]) == pytest.approx(brute_force_sign_flip(diffs), rel=1e-9)


def test_cli_refuses_runs_on_different_examples(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "zeroshot", ZERO_SHOT_META, {"boolq": [1, 0, 1, 0]})
    make_run(root / "trained", trained_meta(1), {"boolq": ([0, 1, 2, 7], [1, 1, 1, 0])})
    out = tmp_path / "summary"
    for flags in (["--baseline", "zeroshot"], ["--compare", "trained", str(root / "zeroshot")]):
        assert analyze_results.main([str(root), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "did not evaluate the same examples" in err
        assert "1 only in trained, 1 only in zeroshot" in err
        assert not out.exists()  # refused before writing anything
    assert analyze_results.main([str(root), "--out", str(out), "--baseline", "nonexistent"]) == 2
    assert "not a run folder with results.json nor a row label" in capsys.readouterr().err


def test_cli_refuses_a_baseline_without_predictions(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "zeroshot", ZERO_SHOT_META, {"boolq": [1, 0, 1, 0]})
    make_run(root / "trained", trained_meta(1), {"boolq": [1, 1, 1, 0]})
    (root / "trained" / "eval" / "boolq.jsonl").unlink()
    assert analyze_results.main([str(root), "--out", str(tmp_path / "out")]) == 0  # no flag: not needed
    capsys.readouterr()
    assert analyze_results.main([str(root), "--out", str(tmp_path / "out"), "--baseline", "zeroshot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no predictions file" in err


def test_seeds_on_different_examples_stay_separate_rows(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "k_s1", trained_meta(1), {"boolq": [1, 0, 1, 0]})
    make_run(root / "k_s2", trained_meta(2, adapter="final"), {"boolq": ([0, 1, 2, 9], [1, 1, 1, 0])})
    make_run(root / "k_lr_s1", trained_meta(1, lr=0.01), {"boolq": [1, 1, 1, 0]})
    out = tmp_path / "summary"
    assert analyze_results.main([str(root), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "stay separate rows" in captured.err and "did not evaluate the same examples" in captured.err
    assert set(read_csv(out / "summary.csv")) == {"k_s1", "k_s2", "k_lr_s1", "chance", "majority"}


def test_no_seed_groups_and_fallback_label(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "first_1", trained_meta(1), {"boolq": [1, 0, 1, 0]})
    make_run(root / "second_2", trained_meta(2), {"boolq": [1, 1, 1, 0]})
    out = tmp_path / "summary"
    assert analyze_results.main([str(root), "--out", str(out)]) == 0
    rows = read_csv(out / "summary.csv")  # folder names without the seed differ: method_model_hparams
    assert set(rows) == {"knowhira_tiny-model_r_ab=4_lr=0.001_max_steps=2", "chance", "majority"}
    assert analyze_results.main([str(root), "--out", str(out), "--no_seed_groups"]) == 0
    assert set(read_csv(out / "summary.csv")) == {"first_1", "second_2", "chance", "majority"}


def test_without_flags_the_table_keeps_its_columns(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "a", trained_meta(1), {"boolq": [1, 0, 1, 0]})
    make_run(root / "b", ZERO_SHOT_META, {"boolq": [1, 1, 1, 0]})
    out = tmp_path / "summary"
    assert analyze_results.main([str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n| ") == printed.count("\n") - 1  # only the main table is printed
    with open(out / "summary.csv", newline="") as handle:
        fields = csv.DictReader(handle).fieldnames
    assert not [f for f in fields if "delta" in f or f.endswith(("_std", "_per_seed"))]
    assert "50.0 ± " in printed and "(4) |" in printed  # accuracy ± Wilson half-width (n)


def test_cloze_runs_are_one_protocol_whatever_their_meta_names(tmp_path):
    """Cloze scoring uses lm-eval's requests, not a protocol's prompt: a zero-shot cloze run recorded under the
    default protocol (hira) and a trained one under clean belong in one comparison."""
    import analyze_results

    for name, meta in (("a", {**trained_meta(1), "protocol": "clean"}), ("b", {**ZERO_SHOT_META, "protocol": "hira"})):
        make_run(tmp_path / name, meta, {"boolq": [1, 0, 1, 1]})
        results = json.loads((tmp_path / name / "results.json").read_text())
        results["tasks"]["boolq"].update(mode="cloze", protocol="cloze (lm-eval style)")
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    assert analyze_results.main([str(tmp_path), "--out", str(tmp_path / "s")]) == 0
    rows = read_csv(tmp_path / "s" / "summary.csv")
    assert {r["protocol"] for r in rows.values() if r.get("protocol")} == {"cloze (lm-eval style)"}


def test_runs_of_different_protocols_are_not_mixed_unless_asked(tmp_path, capsys):
    import analyze_results

    make_run(tmp_path / "a", {**trained_meta(1), "protocol": "hira"}, {"boolq": [1, 0, 1, 1]})
    make_run(tmp_path / "b", {**trained_meta(2, method="hira"), "protocol": "llm_adapters"}, {"boolq": [1, 1, 0, 1]})
    assert analyze_results.main([str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hira, llm_adapters" in err[0] and "--mixed_protocols" in err[0]
    assert not (tmp_path / "s").exists()
    assert analyze_results.main([str(tmp_path), "--out", str(tmp_path / "s"), "--mixed_protocols"]) == 0
    rows = read_csv(tmp_path / "s" / "summary.csv")
    assert (rows["a"]["protocol"], rows["b"]["protocol"]) == ("hira", "llm_adapters")


def test_metric_acc_norm_reads_the_norm_fields_and_pairs_correct_norm(tmp_path, capsys):
    """--metric acc_norm: accuracy_norm and its interval, and the rows' correct_norm for the paired test;
    a text-format evaluation is labelled with its mode and format."""
    def text_run(folder, meta, correct, correct_norm):
        make_run(folder, meta, {"ARC-Easy": correct})
        results = json.loads((folder / "results.json").read_text())
        k = sum(correct_norm)
        lo, hi = wilson_interval(k, len(correct_norm))
        results["tasks"]["ARC-Easy"].update(mode="loglik", answer_format="text", correct_norm=k,
                                            accuracy_norm=k / len(correct_norm), ci95_low_norm=lo, ci95_high_norm=hi)
        (folder / "results.json").write_text(json.dumps(results))
        rows = [json.loads(line) for line in (folder / "eval" / "ARC-Easy.jsonl").read_text().splitlines()]
        lines = [json.dumps({**r, "correct_norm": bool(c)}) for r, c in zip(rows, correct_norm)]
        (folder / "eval" / "ARC-Easy.jsonl").write_text("\n".join(lines) + "\n")

    root = tmp_path / "runs"
    text_run(root / "zeroshot", ZERO_SHOT_META, [1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0])
    text_run(root / "hira", trained_meta(1, method="hira"), [0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0])
    out = tmp_path / "norm"
    assert analyze_results.main([str(root), "--out", str(out), "--baseline", "zeroshot", "--metric", "acc_norm"]) == 0
    rows = read_csv(out / "summary.csv")
    assert float(rows["hira"]["ARC-Easy_accuracy"]) == pytest.approx(7 / 8)
    assert float(rows["hira"]["ARC-Easy_delta"]) == pytest.approx(7 / 8)
    assert float(rows["hira"]["ARC-Easy_p"]) == pytest.approx(2 / 2 ** 7)  # 7 discordant pairs, all one way
    assert rows["hira"]["protocol"] == "clean (loglik, text)"
    assert "Metric: acc_norm" in (out / "summary.md").read_text()
    assert analyze_results.main([str(root), "--out", str(tmp_path / "acc"), "--baseline", "zeroshot"]) == 0
    assert "Metric:" not in (tmp_path / "acc" / "summary.md").read_text()
    assert float(read_csv(tmp_path / "acc" / "summary.csv")["hira"]["ARC-Easy_accuracy"]) == 0.0
    make_run(root / "generated", trained_meta(2), {"ARC-Easy": [1, 0, 0, 0, 0, 0, 0, 0]})
    capsys.readouterr()
    assert analyze_results.main([str(root), "--metric", "acc_norm", "--mixed_protocols"]) == 2
    assert "has no acc_norm" in capsys.readouterr().err


def test_bar_labels_name_the_model_only_where_it_differs_and_wrap_the_hyperparameters():
    from dataclasses import replace

    from analysis.runs import Row

    def table_row(label, method, model, hparams, runs):  # only what the bar labels read
        return Row(runs=runs, label=label, method=method, protocol="clean", model=model, hparams=hparams,
                   trainable=None, val_loss=None, val_loss_std=None, seeds=(), tasks={})

    row = table_row("knowhira", "knowhira", "weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    {"r_ab": 32, "lr": 0.003, "knowledge_alpha": 0.5, "max_steps": 200, "seed": 1}, ("a", "b"))
    zero = table_row("zeroshot", "zero-shot", row.model, {}, ("z",))
    assert report._bar_labels([row, zero]) == [
        "knowhira\nr_ab=32\nlr=0.003\nknowledge_alpha=0.5\nmax_steps=200\nseed=1\n(2 seeds)", "zero-shot"]
    other = replace(zero, model="/models/gpt-neo-125M/")  # a second model: each bar names its own
    assert report._bar_labels([row, other])[0].split("\n")[1] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert report._bar_labels([row, other])[1] == "zero-shot\ngpt-neo-125M"
    twin = replace(row, label="knowhira_b")  # same everything: the row labels tell them apart
    assert report._bar_labels([row, twin])[1].endswith("\n[knowhira_b]")


@pytest.mark.parametrize("edit", [{"accuracy": float("nan")}, {"accuracy": 7.5}, {"accuracy": 0.25}])
def test_an_accuracy_that_is_no_accuracy_is_refused(edit, tmp_path, capsys):
    """NaN, 7.5 (750%) or a value that disagrees with correct / n: one line naming the file, exit 2."""
    import analyze_results

    make_run(tmp_path / "a", trained_meta(1), {"boolq": [1, 0, 1, 0]})
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    results["tasks"]["boolq"].update(edit)
    (tmp_path / "a" / "results.json").write_text(json.dumps(results))
    assert analyze_results.main([str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "a" / "results.json") in err[0] and "is no accuracy" in err[0]
    assert not (tmp_path / "s").exists()


def test_meta_that_is_no_object_and_an_out_that_is_a_file_are_one_line(tmp_path, capsys):
    """Issue 32: results.json "meta" a list (ValueError from dict.update) and --out naming an existing file
    (FileExistsError from mkdir) were tracebacks; each is one line naming the file, exit 2, nothing written."""
    import analyze_results

    make_run(tmp_path / "a", trained_meta(1), {"boolq": [1, 0, 1, 0]})
    afile = tmp_path / "afile"
    afile.write_text("kept")
    assert analyze_results.main([str(tmp_path / "a"), "--out", str(afile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {afile} is a file, not a folder" in err[0], err
    assert afile.read_text() == "kept"
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    (tmp_path / "a" / "results.json").write_text(json.dumps({**results, "meta": [1, 2]}))
    assert analyze_results.main([str(tmp_path / "a"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'a' / 'results.json'}: 'meta' is a JSON list" in err[0], err
    assert not (tmp_path / "s").exists()


def test_cli_compare_of_two_seed_groups_adds_the_welch_interval(runs, tmp_path):
    """Both rows seed groups: the compare table also has the interval over seeds (Welch's t on the
    per-seed accuracies, analysis/welch.py); one side a single run: those cells stay empty."""
    from scipy import stats

    hira_boolq = {1: [1, 1, 1, 1, 0, 0, 1, 0, 1, 0], 2: [1, 1, 1, 0, 0, 0, 1, 0, 1, 0], 3: [1, 1, 1, 1, 1, 0, 1, 0, 1, 0]}
    (runs / "hira_tiny").rename(tmp_path / "hira_single")  # replaced by a 3-seed group
    for seed, correct in hira_boolq.items():
        make_run(runs / f"hira_tiny_s{seed}", trained_meta(seed, method="hira"), {"boolq": correct, "piqa": PIQA[seed]})
    out = tmp_path / "summary"
    assert analyze_results.main([str(runs), "--out", str(out), "--compare", "knowhira_tiny_lr0.001",
                                 str(runs / "hira_tiny_s2")]) == 0
    csvs = list(out.glob("compare_*.csv"))
    assert len(csvs) == 1
    with open(csvs[0], newline="") as handle:
        rows = {row["task"]: row for row in csv.DictReader(handle)}
    x = [sum(SEED_CORRECT[s]) / 10 for s in (1, 2, 3)]  # 0.6, 0.7, 0.9
    y = [sum(hira_boolq[s]) / 10 for s in (1, 2, 3)]  # 0.6, 0.5, 0.7
    ref = stats.ttest_ind(x, y, equal_var=False)
    assert float(rows["boolq"]["seeds_p"]) == pytest.approx(ref.pvalue, rel=1e-9)
    assert float(rows["boolq"]["seeds_delta_lo"]) == pytest.approx(ref.confidence_interval(0.95).low, rel=1e-9)
    # piqa: the same per-seed accuracies on both sides (0.75, 1.0, 0.5): Δ 0, a symmetric interval, p 1
    assert float(rows["piqa"]["seeds_p"]) == pytest.approx(1.0)
    assert float(rows["piqa"]["seeds_delta_lo"]) == pytest.approx(-float(rows["piqa"]["seeds_delta_hi"]))
    md = csvs[0].with_suffix(".md").read_text()
    assert "over seeds: 95% interval" in md and "p (Welch)" in md
    # a single run on one side: no interval over seeds, and no such column in the table
    assert analyze_results.main([str(runs), "--out", str(out), "--compare", "knowhira_tiny_lr0.001",
                                 "zeroshot_tiny"]) == 0
    with open(out / "compare_knowhira_tiny_lr0.001_vs_zeroshot_tiny.csv", newline="") as handle:
        assert all(row["seeds_p"] == "" for row in csv.DictReader(handle))
    assert "p (Welch)" not in (out / "compare_knowhira_tiny_lr0.001_vs_zeroshot_tiny.md").read_text()
