"""Sharing a result with the stock ecosystem (models/export.py, Method.export_peft / load_peft):

1. knowhira, hira, hira_sb -> a stock peft HiRA adapter (B′ = s·B·M) that `PeftModel.from_pretrained`
   loads with no warning and whose logits equal ours (1e-5, fp32), unmerged and merged, on a tiny
   random Llama (nn.Linear) and GPT-2 (Conv1D), after a few training steps;
2. every method -> a plain Hugging Face folder that transformers alone loads in a fresh interpreter
   that cannot import this project, computing the adapted logits (1e-5); a GGUF-loaded model too;
3. `--ckpt PEFT_ADAPTER_DIR --model_name BASE` evaluates a stock peft adapter (peft's own HiRA, our
   LoRA run's folder) with the same predictions as the equivalent run of this project;
4. our adapter folders are not peft folders (old runs still load), and the export command's errors
   are one line, exit 2, nothing written.
The real SmolLM2-135M check (docs/export.md) runs with KNOWHIRA_EXPORT_SMOLLM2=1.
"""
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import run_main, tiny_model
from models.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_layers
from models.compat import LEGACY_CONFIG, LEGACY_WEIGHTS
from models.export import export_checkpoint, open_checkpoint
from models.get_models import ModelOptions
from models.methods import REGISTRY, get_method, training_hooks

IDS = torch.tensor([[15496, 995, 11, 428, 318, 257, 1332, 13], [40, 588, 262, 3797, 290, 13, 50256, 50256]])
R = 4
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "mlp.c_proj"]}
HADAMARD = {"knowhira": {"hira_scale": 0.5}, "hira": {"hira_scale": 2.0}, "hira_sb": {}}

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- helpers ---------------------------------------------------------------------------------
def ce_loss(model, ids=IDS):
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def trained(method, arch, steps=3, **options):
    """(model, cfg): `method` built on tiny_model(arch) and trained `steps` AdamW steps on IDS
    (hira_sb initialised first from two batches, as the recipe does)."""
    m = get_method(method)
    cfg = m.config_cls.from_values({"target_modules": TARGETS[arch], "r_ab": R, **options})
    model = m.build(tiny_model(arch), cfg)
    if training_hooks(m).init_batches(cfg):
        training_hooks(m).initialise(model, cfg, [IDS[:1], IDS[1:]], lambda mod, b: ce_loss(mod, b) / 2)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        ce_loss(model).backward()
        opt.step()
    return model.eval(), cfg


def write_run(run, model, method, cfg, base_dir):
    """A run folder as training leaves it: args.json + best/ (the method's own save)."""
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"peft_type": method, "model_name": str(base_dir), "gguf_file": None,
                                               "load_bit": 32, "protocol": "hira"}))
    get_method(method).save(model, cfg, run / "best")
    return run


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory, gpt2_tokenizer):
    """tiny_model(arch) saved with the real GPT-2 tokenizer: a --model_name folder per arch."""
    out = {}
    for arch in TARGETS:
        d = tmp_path_factory.mktemp(f"base_{arch}")
        tiny_model(arch).save_pretrained(str(d))
        gpt2_tokenizer.save_pretrained(str(d))
        out[arch] = d
    return out


# ---- 1. the Hadamard family as a stock peft HiRA adapter ---------------------------------------
@pytest.mark.parametrize("arch", list(TARGETS))
@pytest.mark.parametrize("method", list(HADAMARD))
def test_peft_export_loads_in_peft_and_computes_our_logits(method, arch, base_dirs, tmp_path):
    from peft import HiraConfig, PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    model, cfg = trained(method, arch, **HADAMARD[method])
    layers = adapter_layers(model)
    assert all(layer.hira_B.abs().sum() > 0 for layer in layers.values())  # B ≠ 0 after training
    if hasattr(cfg, "g_init"):  # KnowHiRA: the gate moved away from its initial logit
        assert all((layer.gate - cfg.g_init).abs().max() > 1e-3 for layer in layers.values())
    ref = logits(model)
    run = write_run(tmp_path / "run", model, method, cfg, base_dirs[arch])
    line = export_checkpoint(open_checkpoint(run), "peft", tmp_path / "out")
    assert "peft HiRA adapter" in line
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not list(tmp_path.glob(".out.*"))  # the temporary folder was renamed

    saved_cfg = json.loads((out / "adapter_config.json").read_text())
    assert saved_cfg.keys() <= {f.name for f in fields(HiraConfig)}  # no key peft would ignore
    assert (saved_cfg["peft_type"], saved_cfg["task_type"], saved_cfg["r"]) == ("HIRA", "CAUSAL_LM", R)
    assert sorted(saved_cfg["target_modules"]) == sorted(layers)  # the exact module names
    assert saved_cfg["fan_in_fan_out"] is (arch == "gpt2")
    assert saved_cfg["base_model_name_or_path"] == str(base_dirs[arch])
    tensors = load_file(str(out / "adapter_model.safetensors"))
    for name, layer in layers.items():  # B′ = s·B·M in fp32, A as trained
        b, a = tensors[f"base_model.model.{name}.hira_B"], tensors[f"base_model.model.{name}.hira_A"]
        assert b.dtype == a.dtype == torch.float32
        torch.testing.assert_close(b, layer.scale * layer.bm().detach(), rtol=0, atol=0)
        assert torch.equal(a, layer.hira_A.detach())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(tiny_model(arch), str(out)).eval()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "missing" in m.lower() or "unexpected" in m.lower()
                or "fan_in_fan_out" in m], messages
    # exactly the keys peft itself would save for this adapter (loading is non-strict: check ourselves)
    assert set(get_peft_model_state_dict(peft_model)) == set(tensors)
    torch.testing.assert_close(logits(peft_model), ref, rtol=0, atol=1e-5)
    merged = peft_model.merge_and_unload()
    assert type(merged) is type(tiny_model(arch))
    torch.testing.assert_close(logits(merged), ref, rtol=0, atol=1e-5)


def test_peft_export_of_other_methods(base_dirs, tmp_path, capsys):
    """lora: the saved peft adapter copied byte for byte; fft: a one-line refusal pointing to
    --export merged, exit 2, nothing left behind."""
    model, cfg = trained("lora", "llama", steps=1)
    run = write_run(tmp_path / "lora", model, "lora", cfg, base_dirs["llama"])
    export_checkpoint(open_checkpoint(run), "peft", tmp_path / "lora_out")
    for f in (run / "best").iterdir():
        assert (tmp_path / "lora_out" / f.name).read_bytes() == f.read_bytes()
    for method, why in (("fft", "every weight"),):
        m = get_method(method)
        cfg = m.config_cls.from_values({"target_modules": TARGETS["llama"], "r_ab": R})
        run = write_run(tmp_path / method, m.build(tiny_model("llama"), cfg), method, cfg, base_dirs["llama"])
        rc, err = run_main(["--ckpt", run, "--export", "peft", "--export_dir", tmp_path / f"{method}_out"], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{method} has no adapter form" in err and why in err and "--export merged" in err
        assert not list(tmp_path.glob(f"*{method}_out*"))


def test_kasa_exports_as_peft_kasa(base_dirs, tmp_path):
    """kasa: peft's own KaSA (LoraConfig(kasa_config=...)); PeftModel.from_pretrained on the PRETRAINED base
    truncates it as ours did and computes our trained model's logits."""
    from peft import PeftModel

    model, cfg = trained("kasa", "llama", steps=2)
    ref = logits(model)
    run = write_run(tmp_path / "kasa", model, "kasa", cfg, base_dirs["llama"])
    line = export_checkpoint(open_checkpoint(run), "peft", tmp_path / "out")
    assert "peft KaSA adapter" in line
    saved_cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert (saved_cfg["peft_type"], saved_cfg["r"], saved_cfg["lora_alpha"]) == ("LORA", R, cfg.kasa_alpha)
    assert saved_cfg["kasa_config"] == {"beta": cfg.kasa_beta, "gamma": cfg.kasa_gamma}
    peft_model = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "out")).eval()
    torch.testing.assert_close(logits(peft_model), ref, rtol=0, atol=1e-5)


# ---- 2. merged export: transformers alone ------------------------------------------------------
FRESH = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
ids = torch.tensor(json.loads(sys.argv[2]))
out = {}
for folder in json.loads(sys.argv[1]):
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (folder, info)
    AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        out[folder] = model.eval()(input_ids=ids).logits
assert not any(m == "models" or m.startswith(("models.", "utils.", "train_knowhira")) for m in sys.modules)
torch.save(out, sys.argv[3])
"""


def test_merged_export_of_every_method_loads_with_transformers_alone(base_dirs, tmp_path):
    refs, folders = {}, []
    archs = {h: ["llama", "gpt2"] for h in HADAMARD}  # the Hadamard family also on GPT-2's Conv1D
    for name in REGISTRY:
        for arch in archs.get(name, ["llama"]):
            model, cfg = trained(name, arch, steps=2, **HADAMARD.get(name, {}))
            refs[f"{name}-{arch}"] = logits(model)
            run = write_run(tmp_path / "runs" / f"{name}-{arch}", model, name, cfg, base_dirs[arch])
            out = tmp_path / "merged" / f"{name}-{arch}"
            assert "plain Hugging Face model" in export_checkpoint(open_checkpoint(run), "merged", out)
            names = {p.name for p in out.iterdir()}
            assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
            folders.append(str(out))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: no script folder, cwd or PYTHONPATH on sys.path, so nothing of this project can be imported
    proc = subprocess.run([sys.executable, "-I", str(script), json.dumps(folders), json.dumps(IDS.tolist()),
                           str(tmp_path / "logits.pt")], cwd=tmp_path, env=dict(env, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "logits.pt")
    for folder in folders:
        torch.testing.assert_close(got[folder], refs[Path(folder).name], rtol=0, atol=1e-5)


def test_merged_export_of_a_gguf_loaded_model(tmp_path):
    """transformers marks a model read from GGUF as quantized and its save_pretrained refuses it;
    its weights are plain (dequantised) tensors, and the export writes them as a plain folder."""
    from transformers import AutoModelForCausalLM, GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    from models.adapter import save_plain_model

    model = tiny_model("llama")
    ref = logits(model)
    model.config.quantization_config = GgufConfig(gguf_file="x.gguf")
    model.hf_quantizer = GgufHfQuantizer(model.config.quantization_config)
    with pytest.raises(ValueError, match="quantized with gguf"):
        model.save_pretrained(str(tmp_path / "refused"))
    save_plain_model(model, None, tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "plain"))
    assert getattr(plain, "hf_quantizer", None) is None
    torch.testing.assert_close(logits(plain.eval()), ref, rtol=0, atol=0)


# ---- 3. --ckpt reads stock peft adapters -------------------------------------------------------
def _predictions(res):
    return [json.loads(line)["prediction"] for line in (res / "eval" / "boolq.jsonl").read_text().splitlines()]


def test_ckpt_evaluates_stock_peft_adapters_like_our_runs(base_dirs, data_dir, tmp_path, capsys):
    """peft's own HiRA (get_peft_model, save_pretrained) through --ckpt ADAPTER --model_name BASE gives
    the predictions of our hira run holding the same tensors; a LoRA run's best/ (a peft folder)
    those of the run."""
    from peft import HiraConfig, PeftModel, get_peft_model

    arch = "gpt2"  # Conv1D: fan_in_fan_out
    peft_model = get_peft_model(tiny_model(arch), HiraConfig(r=R, target_modules=TARGETS[arch], fan_in_fan_out=True,
                                                             task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "hira_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(str(tmp_path / "peft_hira"))
    ours, cfg = trained("hira", arch, steps=0, hira_scale=1.0, ortho_lambda=0.0)
    with torch.no_grad():
        for name, layer in adapter_layers(ours).items():
            peft_layer = peft_model.base_model.model.get_submodule(name)
            layer.hira_A.copy_(peft_layer.hira_A["default"])
            layer.hira_B.copy_(peft_layer.hira_B["default"])
    torch.testing.assert_close(logits(ours), logits(peft_model.eval()), rtol=0, atol=1e-5)
    run = write_run(tmp_path / "hira_run", ours, "hira", cfg, base_dirs[arch])

    common = ["--dataset", "boolq", "--data_dir", data_dir, "--max_examples", 6, "--max_new_tokens", 4,
              "--beam_size", 1, "--protocol", "hira"]
    rc, err = run_main(["--ckpt", tmp_path / "peft_hira", "--model_name", base_dirs[arch], *common,
                        "--results_dir", tmp_path / "res_peft"], capsys)
    assert rc == 0, err
    rc, err = run_main(["--ckpt", run, *common, "--results_dir", tmp_path / "res_run"], capsys)
    assert rc == 0, err
    predictions = _predictions(tmp_path / "res_peft")
    assert len(predictions) == 6 and all(predictions)
    assert predictions == _predictions(tmp_path / "res_run")
    meta = json.loads((tmp_path / "res_peft" / "results.json").read_text())["meta"]
    assert (meta["method"], meta["adapter"], meta["r_ab"]) == ("hira", "peft:peft_hira", R)
    assert meta["trainable_params"] == sum(p.numel() for n, p in peft_model.named_parameters() if "hira_" in n)
    # what --ckpt evaluates (our layers merged) equals peft's own merge of the same adapter
    ckpt = open_checkpoint(tmp_path / "peft_hira", ModelOptions(model_name=str(base_dirs[arch])))
    model, _ = ckpt.load()
    peft_merged = PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "peft_hira")).merge_and_unload()
    torch.testing.assert_close(logits(ckpt.method.merge_and_unload(model)), logits(peft_merged), rtol=0, atol=1e-5)

    lora, cfg = trained("lora", "llama", steps=2)
    run = write_run(tmp_path / "lora_run", lora, "lora", cfg, base_dirs["llama"])
    rc, err = run_main(["--ckpt", run / "best", "--model_name", base_dirs["llama"], *common,
                        "--results_dir", tmp_path / "res_lora_peft"], capsys)
    assert rc == 0, err
    rc, err = run_main(["--ckpt", run, *common, "--results_dir", tmp_path / "res_lora_run"], capsys)
    assert rc == 0, err
    assert _predictions(tmp_path / "res_lora_peft") == _predictions(tmp_path / "res_lora_run")
    assert json.loads((tmp_path / "res_lora_peft" / "results.json").read_text())["meta"]["method"] == "lora"


# ---- 4. our folders, old names, command-line errors --------------------------------------------
def test_our_adapter_folder_is_not_a_peft_folder_and_old_names_still_load(base_dirs, tmp_path):
    from peft import PeftModel

    model, cfg = trained("knowhira", "llama", steps=1)
    ref = logits(model)
    run = write_run(tmp_path / "run", model, "knowhira", cfg, base_dirs["llama"])
    assert sorted(p.name for p in (run / "best").iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    with pytest.raises(ValueError, match="adapter_config.json"):  # at once, not deep inside peft
        PeftModel.from_pretrained(tiny_model("llama"), str(run / "best"))
    # a run saved before the rename: peft's file names holding our format
    (run / "best" / ADAPTER_CONFIG).rename(run / "best" / LEGACY_CONFIG)
    (run / "best" / ADAPTER_WEIGHTS).rename(run / "best" / LEGACY_WEIGHTS)
    old = open_checkpoint(run)
    loaded, _ = old.load()
    torch.testing.assert_close(logits(loaded), ref, rtol=0, atol=0)
    export_checkpoint(old, "peft", tmp_path / "out")  # old runs export too
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    # saving again into the old folder (a resumed old run) leaves only the new names
    get_method("knowhira").save(loaded, cfg, run / "best")
    assert sorted(p.name for p in (run / "best").iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])


def test_export_command_errors_are_one_line(base_dirs, tmp_path, capsys):
    model, cfg = trained("hira", "llama", steps=0)
    run = write_run(tmp_path / "run", model, "hira", cfg, base_dirs["llama"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "boft").mkdir()  # a peft adapter type no method here reads
    (tmp_path / "boft" / "adapter_config.json").write_text(json.dumps({"peft_type": "BOFT"}))
    cases = [
        (["--ckpt", tmp_path / "boft", "--model_name", base_dirs["llama"], "--export", "merged", "--export_dir",
          tmp_path / "o"], "no method here reads a peft BOFT adapter; readable: HIRA (hira), LORA (lora)"),
        (["--ckpt", run, "--export", "peft"], "go together"),
        (["--ckpt", run, "--export", "onnx", "--export_dir", tmp_path / "o"], "must be one of peft, merged"),
        (["--ckpt", run, "--export", "peft", "--export_dir", tmp_path / "taken"], "exists"),
        (["--ckpt", run, "--export", "merged", "--export_dir", tmp_path / "o", "--dataset", "boolq"],
         "not used by --export"),
        (["--ckpt", "none", "--export", "merged", "--export_dir", tmp_path / "o"], "nothing to export"),
        (["--ckpt", run, "--export", "peft", "--export_dir", tmp_path / "o", "--model_name", "x"], "--ckpt none"),
        (["--ckpt", run / "best", "--export", "peft", "--export_dir", tmp_path / "o"], "pass the run folder"),
        (["--ckpt", tmp_path / "nowhere", "--export", "peft", "--export_dir", tmp_path / "o"], "not a run folder"),
        (["--export", "peft", "--export_dir", tmp_path / "o"], "export flag"),
    ]
    for argv, message in cases:
        rc, err = run_main(argv, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boft", "run", "taken"]  # nothing written
    peft_dir = tmp_path / "run_peft"
    rc, err = run_main(["--ckpt", run, "--export", "peft", "--export_dir", peft_dir], capsys)
    assert rc == 0, err
    rc, err = run_main(["--ckpt", peft_dir, "--export", "merged", "--export_dir", tmp_path / "m"], capsys)
    assert rc == 2 and "name its base model with --model_name" in err
    rc, err = run_main(["--ckpt", peft_dir, "--model_name", base_dirs["llama"], "--export", "merged",
                        "--export_dir", tmp_path / "m"], capsys)
    assert rc == 0, err
    assert (tmp_path / "m" / "model.safetensors").is_file()


# ---- the real SmolLM2-135M (docs/export.md; ~1-2 min) -------------------------------
@pytest.mark.skipif(os.environ.get("KNOWHIRA_EXPORT_SMOLLM2") != "1" or not os.environ.get("KNOWHIRA_SMOLLM2_GGUF"),
                    reason="set KNOWHIRA_EXPORT_SMOLLM2=1 and KNOWHIRA_SMOLLM2_GGUF (the real SmolLM2 export check)")
def test_real_smollm2_knowhira_export(tmp_path):
    """KnowHiRA r = 8 on q,k,v,up,down of all 30 layers of the real SmolLM2-135M-Instruct (GGUF), 3 AdamW
    steps: peft's HiRA from --export peft and the plain folder from --export merged (read in a fresh
    interpreter) against our adapted model; the max |Δlogit| are printed for the README."""
    from peft import PeftModel

    from models.adapter import merge_adapters, unmerge_adapters
    from models.get_models import load_base_model

    gguf = os.environ["KNOWHIRA_SMOLLM2_GGUF"]
    t0 = time.time()
    base, tok = load_base_model(gguf)
    ids = tok(["Please answer: is the sky blue? Answer format: true/false", "The capital of France is"],
              return_tensors="pt", padding=True).input_ids
    m = get_method("knowhira")
    cfg = m.config_cls(r_ab=8)
    model = m.build(base, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        ce_loss(model, ids).backward()
        opt.step()
    model.eval()
    ref = logits(model, ids)
    merge_adapters(model)  # the fp32 noise floor: our own merge against our own unmerged forward
    own_merge = (logits(model, ids) - ref).abs().max().item()
    unmerge_adapters(model)
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text(json.dumps({"peft_type": "knowhira", "model_name": gguf, "load_bit": 32}))
    m.save(model, cfg, run / "best")
    del model, base
    export_checkpoint(open_checkpoint(run), "peft", tmp_path / "peft")
    export_checkpoint(open_checkpoint(run), "merged", tmp_path / "merged")
    base, _ = load_base_model(gguf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    assert not [w for w in caught if "missing" in str(w.message).lower()]
    unmerged = (logits(peft_model, ids) - ref).abs().max().item()
    merged = (logits(peft_model.merge_and_unload(), ids) - ref).abs().max().item()
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    proc = subprocess.run([sys.executable, "-I", str(script), json.dumps([str(tmp_path / "merged")]),
                           json.dumps(ids.tolist()), str(tmp_path / "logits.pt")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = (torch.load(tmp_path / "logits.pt")[str(tmp_path / "merged")] - ref).abs().max().item()
    print(f"\nSmolLM2-135M knowhira r=8: max |logit| {ref.abs().max().item():.2f}; max |Δlogit| vs ours: "
          f"peft HiRA unmerged {unmerged:.2e}, peft merge_and_unload {merged:.2e}, "
          f"--export merged in plain transformers {plain:.2e}; our own merge {own_merge:.2e} "
          f"({time.time() - t0:.0f} s)")
    # fp32 rounding through 30 layers: relative to the logits' size, as our own merge's
    assert max(unmerged, merged, plain, own_merge) < 1e-5 * ref.abs().max().item()
