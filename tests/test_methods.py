"""Every method of the registry (models/methods/), on tiny RANDOMLY INITIALISED Llama and GPT-Neo
models: trainable-parameter counts against closed-form formulas, step-0 outputs, one optimiser step
touches only trainable tensors, the methods' regularisers, save -> load round trips, merge for
export, the configs' checks, and a CLI smoke (train + evaluate; four methods by default, all eight
with KNOWHIRA_TEST_CLI_ALL=1).

Configs are built exactly as the CLI builds them: train_knowhira.build_parser + train_values ->
training.recipe.TrainRecipe.from_values (the recipe's .method and .method_cfg); the model is built,
initialised (HiRA-SB), saved and regularised through that method's own operations.
"""
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM

import train_knowhira
from conftest import tiny_model
from data.options import DataOptions
from models.adapter import (ADAPTER_WEIGHTS, adapter_layers, count_trainable, export_merged,
                            read_adapter_config)
from models.get_models import ModelOptions
from models.targets import default_targets
from models.methods import REGISTRY, AdapterMethod, Regularizer, build, get_method, method_of, register
from models.methods.hira import HiRAConfig, ortho_loss
from models.methods.knowhira import KnowHiRAConfig
from models.methods.peft_lib import PeftMethod
from training.loop import LoopConfig
from training.recipe import RunOptions, TrainRecipe

ROOT = Path(__file__).resolve().parents[1]
R = 4
VOCAB = 512  # in-process tests: a small vocabulary keeps the tiny models really tiny
IDS = torch.tensor([[15, 99, 11, 428, 318, 257, 133, 13], [40, 88, 262, 379, 290, 13, 511, 511]])
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"],
           # c_proj (GPT-Neo's MLP output) is peft's IA3 feed-forward module; c_fc is not
           "gpt_neo": ["q_proj", "v_proj", "c_fc", "c_proj"]}
# peft's TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING, written out independently
IA3_FEEDFORWARD = {"llama": {"down_proj"}, "gpt_neo": {"c_proj"}}
ARCHS = list(TARGETS)
BUILTIN = ("knowhira", "hira", "hira_sb", "kasa", "lora", "dora", "ia3", "fft")
METHODS = list(REGISTRY)
OURS = [m for m in METHODS if isinstance(REGISTRY[m], AdapterMethod)]  # knowhira, hira, hira_sb, kasa
# per-method expectations (tables, not branches on the name)
ONLY_TRAINABLE = {"hira_sb": {"hira_R"}}  # after HiRA-SB's initialiser only R trains (B, A fixed)
LAYER_BUFFERS = {"knowhira": {"sigma_norm"}, "kasa": {"kasa_U_drop", "kasa_S_drop", "kasa_V_drop"}}
PEFT_LIBRARY = [m for m in METHODS if isinstance(REGISTRY[m], PeftMethod)]  # lora, dora, ia3


# ---- helpers ---------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("single_thread")


def base_model(arch, seed=0):
    return tiny_model(arch, seed=seed, vocab_size=VOCAB)


def cli_recipe(*argv):
    """The TrainRecipe that `python train_knowhira.py ARGV` trains (train_knowhira.main's steps up
    to TrainRecipe.from_values; nothing is loaded)."""
    parser = train_knowhira.build_parser()
    return TrainRecipe.from_values(train_knowhira.train_values(vars(parser.parse_args(list(argv))), parser))


def ce_loss(model, ids=IDS):
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def make(method, arch, *extra, sb_eta=1e-2, seed=0):
    """(model, recipe) for `method` on tiny_model(arch), configured as the CLI does and built by the
    method; hira_sb is initialised by the method's `initialise` (B, A from the gradient of two tiny
    batches, R for step size --sb_eta) unless sb_eta is None."""
    argv = ["--peft_type", method, "--r_ab", str(R), "--target_modules", ",".join(TARGETS[arch]), *extra]
    if sb_eta is not None and "sb_eta" in {f.name for f in REGISTRY[method].config_cls.option_fields()}:
        argv += ["--sb_eta", str(sb_eta)]
    recipe = cli_recipe(*argv)
    model = recipe.method.build(base_model(arch, seed=seed), recipe.method_cfg)
    if recipe.hooks.init_batches(recipe.method_cfg) and sb_eta is not None:
        batches = [IDS[:1], IDS[1:]]  # token-mean CE over both
        message = recipe.hooks.initialise(model, recipe.method_cfg, batches,
                                           lambda m, b: ce_loss(m, b) / len(batches))
        assert message.startswith("HiRA-SB init: mean relative residual")
    return model, recipe


def target_shapes(model, targets):
    """[(suffix, out, in)] of the nn.Linear layers whose last name component is a target."""
    return [(n.rsplit(".", 1)[-1], *m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]


def expected_trainable(method, arch, targets, r=R, gating=True, vocab_size=VOCAB):
    """The method's trainable-parameter count from the target layers' (out, in) shapes."""
    base = tiny_model(arch, vocab_size=vocab_size)
    whole_model = {"fft": lambda: sum(p.numel() for p in base.parameters())}.get(method)  # every parameter
    if whole_model:
        return whole_model()
    shapes = target_shapes(base, targets)
    assert shapes, targets
    per_layer = {
        "hira": lambda s, o, i: r * (i + o),
        "knowhira": lambda s, o, i: r * (i + o) + (r if gating else 0),
        "hira_sb": lambda s, o, i: r * r,
        "kasa": lambda s, o, i: r * (o + i + 1),
        "lora": lambda s, o, i: r * (i + o),
        "dora": lambda s, o, i: r * (i + o) + o,
        "ia3": lambda s, o, i: i if s in IA3_FEEDFORWARD[arch] else o,
    }[method]
    return sum(per_layer(*s) for s in shapes)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(model, seed=1, std=0.05):
    """Add noise to every trainable parameter so that the adapter is far from its identity init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def truncated_base(arch, targets, r=R):
    """tiny_model(arch) with each target weight replaced by its SVD truncation that drops the r
    smallest singular components (fp64 SVD here, independent of models/methods/kasa.py)."""
    model = base_model(arch)
    with torch.no_grad():
        for n, m in model.named_modules():
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets:
                u, s, vh = torch.linalg.svd(m.weight.double(), full_matrices=False)
                k = min(m.weight.shape) - r
                m.weight.copy_(((u[:, :k] * s[:k]) @ vh[:k]).float())
    return model


# ---- 0. the registry and the configs -----------------------------------------------------------
def test_registry_maps_names_and_config_classes():
    assert set(BUILTIN) <= set(METHODS)
    assert set(OURS) == {"knowhira", "hira", "hira_sb", "kasa"}
    assert set(PEFT_LIBRARY) == {"lora", "dora", "ia3"}
    for name in BUILTIN:
        method = get_method(name)
        assert method.name == name and REGISTRY[name] is method
        assert method_of(method.config_cls()) is method  # found from the config's exact class
    assert len({m.config_cls for m in REGISTRY.values()}) == len(REGISTRY)
    with pytest.raises(ValueError, match="unknown method 'lora2'"):
        get_method("lora2")
    with pytest.raises(ValueError, match="already registered"):
        register(type(get_method("hira"))())
    with pytest.raises(ValueError, match="config of no registered method"):
        build(base_model("llama"), object())
    # a recipe whose config is another method's (before the redesign: AdapterConfig(peft_type=...))
    with pytest.raises(ValueError, match="HiRAConfig is not the config of knowhira"):
        TrainRecipe(ModelOptions(), HiRAConfig(), DataOptions(), LoopConfig(), RunOptions(), "knowhira")
    assert type(cli_recipe("--peft_type", "hira").method_cfg) is HiRAConfig


# every float option of every method's config, with the flags of the command line
FLOAT_FIELDS = {"knowhira": {"adapter_dropout", "hira_scale", "ortho_lambda", "knowledge_alpha", "g_init",
                             "svd_rank_ratio", "spectrum_init_scale", "gate_lr_scale"},
                "hira": {"adapter_dropout", "hira_scale", "ortho_lambda"},
                "hira_sb": {"adapter_dropout", "hira_scale", "sb_eta"},
                "kasa": {"adapter_dropout", "kasa_alpha", "kasa_beta", "kasa_gamma"},
                "lora": {"adapter_dropout", "lora_alpha"}, "dora": {"adapter_dropout", "lora_alpha"},
                "ia3": set(), "fft": set()}


@pytest.mark.parametrize("method", BUILTIN)
def test_every_config_rejects_non_finite_floats(method):
    """NaN and ±inf are refused by every float option, in Python (the dataclass) and on the command
    line (a one-line argparse error, exit 2); finite values of the same options are accepted."""
    cls = get_method(method).config_cls
    floats = {f.name for f in fields(cls) if f.type in (float, "float")}
    assert floats == FLOAT_FIELDS[method]
    for name in sorted(floats):
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError, match=rf"^{name}: must be a finite number, got {bad}"):
                cls(**{name: bad})
        for text in ("nan", "inf", "-inf"):
            with pytest.raises(SystemExit) as e:
                cli_recipe("--peft_type", method, f"--{name}={text}")
            assert e.value.code == 2
        value = getattr(cls(), name)
        assert getattr(cls(**{name: value}), name) == value and math.isfinite(value)


def test_init_ab_accepts_the_original_pair_form():
    """'kaiming,zero' (the original project's 'A init,B init') is 'kaiming'; B must start at zero."""
    assert KnowHiRAConfig(init_ab="kaiming,zero") == KnowHiRAConfig(init_ab="kaiming")
    assert KnowHiRAConfig(init_ab="kaiming,zero").init_ab == "kaiming"
    assert KnowHiRAConfig(init_ab="spectrum, zero") == KnowHiRAConfig()
    with pytest.raises(ValueError, match="^init_ab: B must start at zero.*'gauss'"):
        KnowHiRAConfig(init_ab="kaiming,gauss")
    with pytest.raises(ValueError, match="^init_ab: must be one of spectrum, kaiming"):
        KnowHiRAConfig(init_ab="xavier,zero")
    assert cli_recipe("--init_ab", "kaiming,zero").method_cfg == cli_recipe("--init_ab", "kaiming").method_cfg
    with pytest.raises(SystemExit):
        cli_recipe("--init_ab", "kaiming,gauss")
    # the built adapters agree: Kaiming A (not scaled by the spectrum), B = 0
    a = {}
    for text in ("kaiming,zero", "kaiming", "spectrum"):  # same seed: tiny_model seeds the RNG
        model, _ = make("knowhira", "llama", "--init_ab", text)
        a[text] = {n: m.hira_A.detach().clone() for n, m in adapter_layers(model).items()}
        assert all(torch.count_nonzero(m.hira_B) == 0 for m in adapter_layers(model).values())
    assert a["kaiming,zero"].keys() == a["kaiming"].keys() == a["spectrum"].keys()
    assert all(torch.equal(a["kaiming,zero"][n], a["kaiming"][n]) for n in a["kaiming"])
    assert not any(torch.equal(a["spectrum"][n], a["kaiming"][n]) for n in a["kaiming"])


# ---- 1. trainable-parameter counts -------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_trainable_count_equals_formula(method, arch):
    model, _ = make(method, arch)
    assert count_trainable(model) == expected_trainable(method, arch, TARGETS[arch])
    only = ONLY_TRAINABLE.get(method)
    if only:
        assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == only


@pytest.mark.parametrize("arch", ARCHS)
def test_knowhira_without_gating_count(arch):
    model, _ = make("knowhira", arch, "--no-adaptive_gating")
    assert count_trainable(model) == expected_trainable("knowhira", arch, TARGETS[arch], gating=False)


def test_ia3_gpt2_default_targets_scale_mlp_c_proj_input():
    """GPT-2's default targets (c_attn, c_fc, mlp.c_proj; Conv1D layers): peft's IA3 mapping names
    "mlp.c_proj" as GPT-2's feed-forward module, so its IA3 vector scales the INPUT (192 = 4·48)."""
    model = base_model("gpt2")
    recipe = cli_recipe("--peft_type", "ia3")
    assert recipe.method_cfg.target_modules is None  # the architecture's defaults, at build time
    peft_cfg = recipe.method.peft_config(recipe.method_cfg, default_targets("gpt2"), "gpt2")
    assert set(peft_cfg.feedforward_modules) == {"mlp.c_proj"}
    conv = {n: m.weight.shape for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    expected = sum(shape[0] if n.endswith("mlp.c_proj") else shape[1]  # Conv1D weight: in x out
                   for n, shape in conv.items() if n.rsplit(".", 1)[-1] in ("c_attn", "c_fc")
                   or n.endswith("mlp.c_proj"))
    model = recipe.method.build(model, recipe.method_cfg)
    assert set(model.peft_config["default"].feedforward_modules) == {"mlp.c_proj"}
    assert count_trainable(model) == expected == 2 * (144 + 192 + 192)


# ---- 2. step 0 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", [m for m in METHODS if m != "kasa"])
def test_step0_equals_base_exactly(method, arch):
    """B = 0 (HiRA family; LoRA; DoRA with magnitude = ||W||), R = 0 (HiRA-SB before init), IA3
    vectors = 1, FFT untouched: the logits are BIT-IDENTICAL (torch.equal) to the base model's."""
    ref = logits(base_model(arch))
    model, _ = make(method, arch, sb_eta=None)
    assert torch.equal(logits(model), ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_step0_hira_sb_after_init(arch):
    """After hira_sb_initialise: η = 0 gives R = 0 and exactly the base logits; η > 0 does not."""
    ref = logits(base_model(arch))
    model, _ = make("hira_sb", arch, sb_eta=0.0)
    layers = adapter_layers(model).values()
    assert all(torch.count_nonzero(m.hira_R) == 0 for m in layers)
    assert all(m.hira_B.abs().sum() > 0 and m.hira_A.abs().sum() > 0 for m in layers)
    assert torch.equal(logits(model), ref)
    moved, _ = make("hira_sb", arch, sb_eta=1e-1)
    assert (logits(moved) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_step0_kasa_equals_truncated_base(arch):
    """KaSA starts as the TRUNCATED base (ΔU = 0): allclose (atol 1e-6; the module subtracts the
    dropped fp32-SVD components, the reference keeps the top fp64-SVD components) to the reference,
    and clearly different from the untruncated base."""
    model, _ = make("kasa", arch)
    got = logits(model)
    trunc = logits(truncated_base(arch, TARGETS[arch]))
    torch.testing.assert_close(got, trunc, atol=1e-6, rtol=0)
    assert (got - logits(base_model(arch))).abs().max() > 1e-4  # the truncation is visible


# ---- 3. one optimisation step touches only trainable tensors ----------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_only_trainable_tensors(method, arch):
    model, recipe = make(method, arch)
    reg = recipe.hooks.regularizer(recipe.method_cfg)  # what TrainRecipe.trainer() hands the loop
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    before = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    loss = ce_loss(model)
    if reg is not None:
        assert isinstance(reg, Regularizer)
        loss = loss + reg.weight * reg.fn(model)
    loss.backward()
    opt.step()
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing changed"
    assert changed <= trainable, sorted(changed - trainable)[:5]
    buffers = {n for n, _ in model.named_buffers()}
    for n in buffers:  # KnowHiRA's σ_norm, KaSA's dropped components, rotary caches, ...
        assert n not in changed
    own = LAYER_BUFFERS.get(method, set())  # the method's buffers, one set per adapted layer
    assert sum(n.rsplit(".", 1)[-1] in own for n in buffers) == len(own) * len(adapter_layers(model))
    only = ONLY_TRAINABLE.get(method)
    if only:
        assert changed and all(k.rsplit(".", 1)[-1] in only for k in changed)


def test_hira_sb_factors_stay_fixed_over_steps():
    """hira_sb_initialise, then 3 AdamW steps (weight decay on): B and A bit-identical, R moves."""
    model, _ = make("hira_sb", "llama", sb_eta=1e-2)
    layers = adapter_layers(model)
    b0 = {n: m.hira_B.detach().clone() for n, m in layers.items()}
    a0 = {n: m.hira_A.detach().clone() for n, m in layers.items()}
    r0 = {n: m.hira_R.detach().clone() for n, m in layers.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        ce_loss(model).backward()
        opt.step()
    for n, m in layers.items():
        assert torch.equal(m.hira_B, b0[n]) and torch.equal(m.hira_A, a0[n])
        assert not torch.equal(m.hira_R, r0[n])


def ortho_reference(layers) -> torch.Tensor:
    """HiRA/KnowHiRA: mean over adapted layers of L_ortho."""
    return torch.stack([m.ortho_loss() for m in layers]).mean()


def kasa_reference(layers, beta=0.3, gamma=0.7) -> torch.Tensor:
    """KaSA: Σ_layers β Σ Δσ² + γ (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F)."""
    return sum(beta * (m.kasa_dS ** 2).sum()
               + gamma * (torch.linalg.matrix_norm(m.kasa_dU.t() @ m.kasa_dU - torch.eye(R))
                          + torch.linalg.matrix_norm(m.kasa_dV.t() @ m.kasa_dV - torch.eye(R)))
               for m in layers)


# method -> (flags, the regulariser's weight, its value from the adapted layers, rtol); others have none
REGULARIZERS = {"hira": (["--ortho_lambda", "0.25"], 0.25, ortho_reference, 0),
                "knowhira": (["--ortho_lambda", "0.25"], 0.25, ortho_reference, 0),
                "kasa": (["--kasa_beta", "0.3", "--kasa_gamma", "0.7"], 1.0, kasa_reference, 1e-6)}


@pytest.mark.parametrize("method", METHODS)
def test_regularizer_of_every_method(method):
    """The loop's L = L_task + weight · fn(model): hira / knowhira λ_ortho · mean-layer L_ortho, kasa
    its β/γ terms with weight 1, nothing for hira_sb (A, B fixed), the peft methods and fft."""
    extra, weight, reference, rtol = REGULARIZERS.get(method, ([], None, None, None))
    model, recipe = make(method, "llama", *extra, sb_eta=None)
    perturb(model)
    reg = recipe.hooks.regularizer(recipe.method_cfg)
    if reference is None:
        assert reg is None
        return
    assert reg.weight == weight
    torch.testing.assert_close(reg.fn(model), reference(adapter_layers(model).values()), rtol=rtol, atol=0)


@pytest.mark.parametrize("method", ["hira", "knowhira"])
def test_ortho_regularizer_is_off_at_lambda_0(method):
    reg = get_method(method).regularizer(cli_recipe("--peft_type", method, "--ortho_lambda", "0.25").method_cfg)
    assert reg.fn is ortho_loss
    assert get_method(method).regularizer(cli_recipe("--peft_type", method, "--ortho_lambda", "0").method_cfg) is None


# ---- 4. save -> load round trip ----------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, arch, tmp_path):
    model, recipe = make(method, arch)
    perturb(model)
    ref = logits(model)
    assert (ref - logits(base_model(arch))).abs().max() > 1e-4  # the adapter is non-trivial
    recipe.save(model, tmp_path)  # the save the training loop calls (best/, final/)
    loaded = get_method(method).load(base_model(arch), tmp_path).eval()
    torch.testing.assert_close(logits(loaded), ref, atol=1e-6, rtol=0)
    if isinstance(recipe.method, AdapterMethod):  # ours: our adapter files
        saved_cfg = read_adapter_config(tmp_path)
        assert saved_cfg == {"peft_type": method, **asdict(recipe.method_cfg)}
        assert recipe.method.config_from_saved(saved_cfg) == recipe.method_cfg
        saved = load_file(str(tmp_path / ADAPTER_WEIGHTS))
        for name, layer in adapter_layers(loaded).items():
            src = adapter_layers(model)[name]
            keys = [k.rsplit(".", 1)[-1] for k in saved if k.rsplit(".", 1)[0] == name]
            assert set(keys) == {*layer.saved_tensors, "w0_fro", "w0_sample"}  # + the base's fingerprint
            for key in keys:
                if key not in ("w0_fro", "w0_sample"):
                    assert torch.equal(getattr(layer, key), getattr(src, key)), (name, key)
            if "gate" in layer.saved_tensors:  # KnowHiRA: the perturbed gates and σ_norm survive
                assert {"gate", "sigma_norm"} <= set(keys)
                assert not torch.equal(layer.gate, torch.full_like(layer.gate, -1.0))


# ---- 5. merge for export -----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", OURS)
def test_export_merged_equals_adapted(method, arch, tmp_path):
    """Our methods: export_merged -> plain AutoModelForCausalLM.from_pretrained (atol 1e-5)."""
    model, _ = make(method, arch)
    perturb(model)
    ref = logits(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    export_merged(model, None, tmp_path)
    # the merged model's parameters keep their requires_grad (export used to set it on every one)
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    plain, info = AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not adapter_layers(plain)
    torch.testing.assert_close(logits(plain.eval()), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_merge_and_unload(method, arch):
    """Every method's merge_and_unload (what evaluation's --merge uses; peft's own for lora / dora /
    ia3) gives a plain transformers model computing the adapted logits (atol 1e-5)."""
    model, recipe = make(method, arch)
    perturb(model)
    ref = logits(model)
    merged = recipe.method.merge_and_unload(model)
    assert type(merged) is type(base_model(arch))
    assert not adapter_layers(merged)
    assert not any("lora_" in n or "ia3_" in n or "hira_" in n or "kasa_" in n
                   for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), ref, atol=1e-5, rtol=0)


# ---- 6. CLI smoke: train + evaluate every method -----------------------------------------------
CLI_TARGETS = ["q_proj", "v_proj", "c_fc"]
# All eight CLI smokes cost ~45 s of CPU (each train/eval reloads tokenizer and model, plots the
# losses, ...): too much for this file's ~60 s budget on a shared 2-core machine. By default the
# representative four run (KnowHiRA, HiRA-SB, KaSA, LoRA); KNOWHIRA_TEST_CLI_ALL=1 runs all eight.
CLI_METHODS = METHODS if os.environ.get("KNOWHIRA_TEST_CLI_ALL") == "1" else \
    ("knowhira", "hira_sb", "kasa", "lora")
# One fresh interpreter (imports paid once) runs train_knowhira.main(argv) for every command line
# (`_cli_driver`: this file run as a script); for hira_sb it then runs the CLI's setup again for the
# same command line (TrainRecipe.setup: load, tokenize, build, initialise; same process, same thread
# count, so bit-identical) and stores the initial B, A and R for comparison with the trained adapter.
def _sb_init_state(argv, out) -> int:
    """The adapter tensors the CLI's training of `argv` starts from."""
    from safetensors.torch import save_file

    recipe = cli_recipe(*argv).setup()
    save_file({f"{n}.{k}": getattr(m, k).detach().contiguous() for n, m in adapter_layers(recipe.model).items()
               for k in m.saved_tensors}, out)
    return 0


def _cli_driver(calls_json: str, status_path: str) -> int:
    """[(name, kind, argv)]: kind "main" -> train_knowhira.main(argv), else _sb_init_state(argv, kind);
    each call's exit status (or error) goes to the JSON file `status_path`."""
    t0, status = time.time(), {}
    for name, kind, argv in json.loads(calls_json):
        try:
            status[name] = train_knowhira.main(argv) if kind == "main" else _sb_init_state(argv, kind)
        except BaseException as e:
            traceback.print_exc()
            status[name] = f"{type(e).__name__}: {e}"
        print(f"=== {name}: {status[name]} ({time.time() - t0:.1f} s)", flush=True)
    Path(status_path).write_text(json.dumps(status))
    return 0


def _env_dir(var):
    path = os.environ.get(var)
    return Path(path) if path and Path(path).is_dir() else None


@pytest.fixture(scope="module", autouse=True)
def cli_background(request, tmp_path_factory):
    """Start the CLI runs (one background interpreter, one thread) at the first test of this module,
    so that they overlap the in-process tests; only when a CLI test is selected and the real data
    and tokenizer folders exist (else the CLI tests skip through the conftest fixtures).

    The interpreter calls train_knowhira.main(argv) (what `python train_knowhira.py ARGV` runs) for
    every command line in turn, paying the ~8 s of torch/transformers/peft imports once."""
    here = request.module.__file__
    wanted = any(item.name.startswith("test_cli") and str(item.fspath) == here
                 for item in request.session.items)
    data_dir, tok_dir = _env_dir("KNOWHIRA_DATA_DIR"), _env_dir("KNOWHIRA_TOKENIZER_DIR")
    if not (wanted and data_dir and tok_dir):
        yield None
        return
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("methods_cli")
    model_dir = out / "tiny_gpt_neo"  # tiny RANDOM GPT-Neo + the real GPT-2 tokenizer
    tiny_model("gpt_neo").save_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.pad_token = tok.eos_token
    tok.save_pretrained(str(model_dir))
    small = out / "data"  # the first 40 real openbookqa training records (tokenising is the cost)
    (small / "openbookqa").mkdir(parents=True)
    records = json.loads((data_dir / "openbookqa" / "train.json").read_text())[:40]
    (small / "openbookqa" / "train.json").write_text(json.dumps(records))
    runs = out / "runs"
    calls = []
    for m in CLI_METHODS:
        train = ["--model_name", str(model_dir), "--peft_type", m, "--dataset", "openbookqa",
                 "--data_dir", str(small), "--max_steps", "2", "--batch", "2", "--val_size", "4",
                 "--eval_steps", "2", "--r_ab", str(R), "--target_modules", ",".join(CLI_TARGETS),
                 "--sb_init_batches", "2", "--output_folder", str(runs), "--run_name", m]
        calls.append((f"train {m}", "main", train))
        if m == "hira_sb":
            calls.append(("sb init", str(out / "sb_init.safetensors"), train))
        calls.append((f"eval {m}", "main", ["--ckpt", str(runs / m), "--dataset", "boolq",
                                            "--data_dir", str(data_dir), "--max_examples", "4",
                                            "--eval_mode", "loglik", "--eval_batch", "4"]))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with open(out / "console.txt", "w") as log:  # a file, not a pipe: nobody reads it meanwhile
        proc = subprocess.Popen([sys.executable, __file__, json.dumps(calls), str(out / "status.json")],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    yield {"proc": proc, "out": out, "runs": runs}
    if proc.poll() is None:  # the module ended early (e.g. -x): do not leave it running
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def cli_runs(cli_background, data_dir, gpt2_tokenizer):
    if cli_background is None:
        pytest.skip("CLI runs were not started")
    proc, out = cli_background["proc"], cli_background["out"]
    try:
        rc = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = "timeout"
    log = (out / "console.txt").read_text()
    assert rc == 0, log[-6000:]
    summary = "\n".join(line for line in log.splitlines() if line.startswith("=== "))
    return {"runs": cli_background["runs"], "status": json.loads((out / "status.json").read_text()),
            "sb_init": out / "sb_init.safetensors", "log": summary + "\n" + log[-4000:]}


@pytest.mark.parametrize("method", CLI_METHODS)
def test_cli_train_and_eval(cli_runs, method):
    status, run = cli_runs["status"], cli_runs["runs"] / method
    assert status[f"train {method}"] == 0, cli_runs["log"]
    assert status[f"eval {method}"] == 0, cli_runs["log"]
    saved = json.loads((run / "args.json").read_text())
    assert saved["peft_type"] == method
    assert saved["trainable_params"] == expected_trainable(method, "gpt_neo", CLI_TARGETS,
                                                          vocab_size=50257)
    assert (run / "final").is_dir() and (run / "best").is_dir()
    results = json.loads((run / "results.json").read_text())
    assert results["tasks"]["boolq"]["n"] == 4
    assert results["meta"]["trainable_params"] == saved["trainable_params"]
    assert results["meta"]["method"] == method


def test_cli_hira_sb_keeps_b_and_a_fixed(cli_runs):
    """The trained adapter's hira_A / hira_B are bit-identical to those right after the CLI's
    HiRA-SB initialisation; hira_R moved away from its initial value."""
    assert cli_runs["status"]["sb init"] == 0, cli_runs["log"]
    init = load_file(str(cli_runs["sb_init"]))
    final = load_file(str(cli_runs["runs"] / "hira_sb" / "final" / ADAPTER_WEIGHTS))
    assert len(init) == 3 * 2 * len(CLI_TARGETS)  # 3 tensors x 2 blocks x targets
    for key, value in init.items():
        if key.endswith(("hira_A", "hira_B")):
            assert torch.equal(final[key], value), key
            assert value.abs().sum() > 0, key
        else:
            assert not torch.equal(final[key], value), key


if __name__ == "__main__":  # the CLI driver of `cli_background` (a fresh interpreter)
    sys.exit(_cli_driver(sys.argv[1], sys.argv[2]))
