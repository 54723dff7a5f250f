"""Smoke test of the benchmark package (`python -m scripts.bench`) at toy sizes: it runs sections
(a) layer, (b) the recipe's training step on a tiny random GPT-Neo-shaped model with real records,
and (d) singular values, prints its tables and writes its JSON. It asserts nothing about speed
(timings on a shared CPU are noise), only that every timing is there and positive."""
import json

from scripts.bench.common import paired_ratio
from scripts.bench.run import main


def test_bench_runs_at_toy_sizes(tmp_path, capsys, data_dir, gpt2_tokenizer, single_thread):
    out = tmp_path / "bench.json"
    results = main([
        "--sections", "a,b,d", "--smollm2", "none", "--out", str(out),
        "--data_dir", str(data_dir), "--tokenizer", gpt2_tokenizer.name_or_path,
        "--layer_dim", "32", "--tokens", "16", "--layer_batch", "2", "--r", "4",
        "--repeats", "1", "--warmup", "0", "--infer_repeats", "1",
        "--gptneo_shaped", "--neo_hidden", "32", "--neo_heads", "2", "--neo_layers", "1",
        "--step_batch", "2", "--step_data", "boolq", "--step_records", "4", "--cutoff_len", "48",
        "--step_repeats", "1", "--step_warmup", "0", "--methods", "knowhira,peft-hira",
        "--svd_layers", "1", "--neo_total_layers", "3"])
    saved = json.loads(out.read_text())
    assert {"meta", "layer", "step", "svd", "checks"} <= set(saved)
    layer = saved["layer"]["median_s"]
    assert set(layer) == {"fused-knowhira", "fused-hira", "peft-hira", "peft-lora", "fft", "frozen"}
    assert all(t > 0 for t in layer.values())
    step = saved["step"]["gptneo_shaped"]
    assert set(step["median_s"]) == {"knowhira", "peft-hira"}
    assert all(t > 0 for t in step["median_s"].values()) and step["tokens"] > 0
    assert step["step_kind"]["knowhira"].startswith("recipe: training.loop.Trainer.train_step")
    assert step["step_kind"]["peft-hira"].startswith("HF mean loss, peft HiRA")
    assert step["data"]["records"] == {"boolq": 4}
    assert saved["svd"]["gptneo_shaped"]["EXTRAPOLATED_3_layers_s"] > 0
    assert [c["check"] for c in results["checks"]][:2] == [
        "Layer (a): fused KnowHiRA / fft", "Layer (a): fused KnowHiRA / peft HiRA"]
    printed = capsys.readouterr().out
    assert "== target checks (issue)" in printed and "EXTRAPOLATED" in printed


def test_paired_ratio_median_and_bootstrap_interval():
    """The median of the paired ratios, and a seeded interval that brackets it within the ratios' range."""
    r = paired_ratio([2.0, 4.0, 6.0, 9.0, 3.0], [1.0, 2.0, 2.0, 3.0, 1.0])  # ratios 2, 2, 3, 3, 3
    assert r["median"] == 3.0 and r["n"] == 5 and r["per_pair"] == [2.0, 2.0, 3.0, 3.0, 3.0]
    assert 2.0 <= r["ci95"][0] <= 3.0 == r["ci95"][1]
    assert r == paired_ratio([2.0, 4.0, 6.0, 9.0, 3.0], [1.0, 2.0, 2.0, 3.0, 1.0])  # seeded
    assert paired_ratio([5.0], [2.0])["ci95"] == [2.5, 2.5]


def test_peer_sections_run_at_toy_sizes(tmp_path, data_dir, gpt2_tokenizer, single_thread):
    """(f) the recipe against HF Trainer + peft on the same batches, step by step; (g) our evaluation against
    LLM-Adapters' evaluator protocol; (h) cloze scoring against lm-eval's HFLM; on a tiny random
    GPT-Neo-shaped model (random weights: the timings mean nothing, the pairing and the scores do)."""
    out = tmp_path / "bench.json"
    steps = 3
    results = main(["--sections", "f,g,h", "--smollm2", "none", "--out", str(out), "--data_dir", str(data_dir),
                    "--tokenizer", gpt2_tokenizer.name_or_path, "--r", "4", "--gptneo_shaped", "--neo_hidden", "32",
                    "--neo_heads", "2", "--neo_layers", "1", "--step_batch", "2", "--step_data", "ARC-Easy,openbookqa",
                    "--step_records", "3", "--cutoff_len", "64", "--peer_steps", str(steps), "--peer_warmup", "1",
                    "--peer_rounds", "1", "--eval_n", "2", "--gemm_dim", "64", "--cloze_n", "3", "--cloze_batch", "4",
                    "--cloze_rounds", "2"])
    peers = json.loads(out.read_text())["peers"]
    tr, ev = peers["training"], peers["evaluation"]
    assert set(tr["tokens_per_s"]) == {"lora", "hira", "knowhira", "hf-peft-lora", "hf-peft-hira"}
    assert all(v > 0 for v in tr["tokens_per_s"].values()) and peers["gemm_fp32_tflops"] > 0
    # both pairs ran the recipe's batch sequence (6 records, batch 2: 3 steps an epoch, the 4th step
    # starts epoch 1); our steps saw the same non-padding tokens as HF's at every step (run_pair raises
    # otherwise), so each pipeline's tokens/s is the same tokens over its own time
    per_step = tr["tokens_per_step"]
    assert per_step["hf-peft-hira"] == per_step["hf-peft-lora"] and len(per_step["hf-peft-lora"]) == steps
    assert all(t > 0 for t in per_step["hf-peft-lora"])
    assert set(tr["pairs"]) == {"knowhira / hf-peft-hira", "hira / hf-peft-hira", "lora / hf-peft-lora"}
    for name, pair in tr["pairs"].items():
        theirs = name.split(" / ")[1]
        assert pair["n"] == steps and pair["ci95"][0] <= pair["median"] <= pair["ci95"][1]
        assert pair["per_pair"][0] > 0
        # the median paired ratio is about tokens/s: the same tokens per step in both
        assert min(pair["per_pair"]) <= tr["tokens_per_s"][name.split(" / ")[0]] / tr["tokens_per_s"][theirs] \
            <= max(pair["per_pair"])
    assert len(ev["examples_per_s"]) == 5 and all(v > 0 for v in ev["examples_per_s"].values())
    assert ev["loglik_max_abs_diff"] < 1e-4
    cloze = peers["cloze_vs_lm_eval"]
    assert cloze["n_examples"] == 3 and cloze["n_requests"] >= 9 and len(cloze["examples_per_s"]) == 3
    assert cloze["score_max_abs_diff"] < 1e-4  # the same scores as lm-eval's
    for p in cloze["ratios"].values():
        assert p["n"] == 2 and p["ci95"][0] <= p["median"] <= p["ci95"][1]
    checks = {c["check"] for c in results["checks"]}
    assert {"Peers (f): knowhira / HF Trainer + peft HiRA tokens/s", "Scoring (h): cloze / lm-eval HFLM examples/s"
            } <= checks
