"""Smoke test of scripts/bench.py at toy sizes: it runs, prints its tables and writes its JSON.
It asserts nothing about speed (timings on a shared CPU are noise)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = _bench().main([
        "--sections", "a,b,d", "--smollm2", "none", "--out", str(out),
        "--layer_dim", "32", "--tokens", "16", "--layer_batch", "2", "--r", "4",
        "--repeats", "1", "--warmup", "0", "--infer_repeats", "1",
        "--gptneo_shaped", "--neo_hidden", "32", "--neo_heads", "2", "--neo_layers", "1",
        "--step_batch", "1", "--step_seq", "8", "--step_repeats", "1", "--step_warmup", "0",
        "--methods", "knowhira,peft-hira",
        "--svd_layers", "1", "--neo_total_layers", "3"])
    saved = json.loads(out.read_text())
    assert set(saved["layer"]["median_s"]) == {"fused-knowhira", "fused-hira", "peft-hira",
                                                "peft-lora", "fft", "frozen"}
    assert set(saved["step"]["gptneo_shaped"]["median_s"]) == {"knowhira", "peft-hira"}
    assert saved["svd"]["gptneo_shaped"]["EXTRAPOLATED_3_layers_s"] > 0
    assert [c["check"] for c in results["checks"]][:2] == [
        "Layer (a): fused KnowHiRA / fft", "Layer (a): fused KnowHiRA / peft HiRA"]
    printed = capsys.readouterr().out
    assert "== target checks (issue)" in printed and "EXTRAPOLATED" in printed
