"""Smoke test of the benchmark package (`python -m scripts.bench`) at toy sizes: it runs sections
(a) layer, (b) the recipe's training step on a tiny random GPT-Neo-shaped model with real records,
and (d) singular values, prints its tables and writes its JSON. It asserts nothing about speed
(timings on a shared CPU are noise), only that every timing is there and positive."""
import json

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


def test_peer_section_runs_at_toy_sizes(tmp_path, data_dir, gpt2_tokenizer, single_thread):
    """(f): the recipe against HF Trainer + peft, and our evaluation against LLM-Adapters' evaluator
    protocol, on a tiny random GPT-Neo-shaped model; the single-pass scores equal the full forward's."""
    out = tmp_path / "bench.json"
    main(["--sections", "f", "--smollm2", "none", "--out", str(out), "--data_dir", str(data_dir),
          "--tokenizer", gpt2_tokenizer.name_or_path, "--r", "4", "--gptneo_shaped", "--neo_hidden", "32",
          "--neo_heads", "2", "--neo_layers", "1", "--step_batch", "2", "--step_data", "boolq",
          "--step_records", "6", "--cutoff_len", "64", "--peer_steps", "1", "--peer_rounds", "1",
          "--eval_n", "2", "--gemm_dim", "64"])
    peers = json.loads(out.read_text())["peers"]
    tr, ev = peers["training"], peers["evaluation"]
    assert set(tr["tokens_per_s"]) == {"lora", "hira", "knowhira", "hf-peft-lora", "hf-peft-hira"}
    assert all(v > 0 for v in tr["tokens_per_s"].values()) and peers["gemm_fp32_tflops"] > 0
    assert len(ev["examples_per_s"]) == 5 and all(v > 0 for v in ev["examples_per_s"].values())
    assert ev["loglik_max_abs_diff"] < 1e-4
