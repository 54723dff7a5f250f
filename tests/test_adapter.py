"""Injection, σ_norm from the PRETRAINED weights, save/load, merge/export (tiny RANDOM models,
plus the real SmolLM2 spectrum when KNOWHIRA_SMOLLM2_GGUF is set)."""
import json
import os
from dataclasses import asdict

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from models.adapter import (ADAPTER_CONFIG, adapter_layers, count_trainable, export_merged,
                            merge_adapters, read_adapter_config, unmerge_adapters)
from models.layers import base_weight, layer_shape
from models.methods import build, get_method, method_of
from models.methods.hira import ortho_loss
from models.methods.knowhira import KnowHiRAConfig
from models.spectrum import sigma_norm_from_values

IDS = torch.tensor([[15496, 995, 11, 428, 318, 257, 1332, 13], [40, 588, 262, 3797, 290, 13, 50256, 50256]])

ARCH_TARGETS = [("gpt_neo", ["q_proj", "v_proj", "out_proj"]), ("gpt2", ["c_attn", "attn.c_proj"]),
                ("llama", ["q_proj", "down_proj"])]


def adapted(arch, targets, variant="knowhira", r=4, seed=0, **kw):
    model = tiny_model(arch, seed=seed)
    cfg = get_method(variant).config_cls(r_ab=r, target_modules=targets, **kw)
    build(model, cfg)
    return model, cfg


def randomise_b(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.hira_B.copy_(torch.randn(layer.hira_B.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch,targets", ARCH_TARGETS)
@pytest.mark.parametrize("gating", [True, False])
def test_trainable_count_equals_formula(arch, targets, gating):
    model, cfg = adapted(arch, targets, adaptive_gating=gating)
    layers = adapter_layers(model)
    assert len(layers) == 2 * len(targets)  # two blocks
    expected = sum(4 * sum(layer_shape(m.base)) + (4 if gating else 0) for m in layers.values())
    assert count_trainable(model) == expected  # r·(in+out) + r per layer
    assert all(n.split(".")[-1] in {"hira_A", "hira_B", "gate"}
               for n, p in model.named_parameters() if p.requires_grad)


def test_gpt2_conv1d_is_transposed_correctly():
    model, _ = adapted("gpt2", ["c_attn"])
    layer = next(iter(adapter_layers(model).values()))
    assert layer_shape(layer.base) == (144, 48)  # c_attn: 48 -> 3·48, Conv1D weight is 48 x 144
    randomise_b(model)
    x = torch.randn(3, 48)
    w = base_weight(layer.base) + layer.delta_weight()
    assert torch.allclose(layer(x), x @ w.t() + layer.base.bias, atol=1e-5)


@pytest.mark.parametrize("arch,targets", ARCH_TARGETS)
def test_step0_logits_equal_base(arch, targets):
    base = tiny_model(arch)
    model, _ = adapted(arch, targets)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits)


def test_unknown_target_is_a_clear_error():
    model = tiny_model("gpt_neo")
    with pytest.raises(ValueError) as e:
        build(model, KnowHiRAConfig(target_modules=["q_proj", "o_proj"]))
    msg = str(e.value)
    assert "o_proj" in msg and "out_proj" in msg and "available" in msg
    with pytest.raises(ValueError, match="not linear"):
        build(tiny_model("gpt_neo"), KnowHiRAConfig(target_modules=["attn"]))
    with pytest.raises(ValueError, match="matches no linear"):
        build(tiny_model("llama"), KnowHiRAConfig(target_modules="re:.*nothing.*"))
    with pytest.raises(ValueError, match="matches no linear"):  # a regex as saved (no 're:')
        build(tiny_model("llama"), KnowHiRAConfig(target_modules=r".*nothing.*"))


def test_regex_and_all_linear_targets():
    expected = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "kq"]
    for targets in (r"re:.*\.self_attn\.(q|k)_proj", r".*\.self_attn\.(q|k)_proj"):  # CLI form, saved form
        model, cfg = adapted("llama", targets)
        assert cfg.target_modules == r".*\.self_attn\.(q|k)_proj"
        assert sorted(adapter_layers(model)) == expected
    model, cfg = adapted("llama", "q_proj, down_proj")  # a comma list given as text
    assert cfg.target_modules == ["q_proj", "down_proj"] and len(adapter_layers(model)) == 2 * 2
    model, _ = adapted("llama", "all-linear")
    assert len(adapter_layers(model)) == 2 * 7  # lm_head is never adapted
    assert "lm_head" not in adapter_layers(model)


def test_bad_hyperparameters_fail():
    """The checks run when the config is built (the layers take a checked config)."""
    for kw, msg in [({"r_ab": 0}, "r_ab: must be > 0"), ({"svd_rank_ratio": 1.5}, "svd_rank_ratio"),
                    ({"svd_rank_ratio": 0.0}, "svd_rank_ratio"),
                    ({"knowledge_alpha": -0.1}, "knowledge_alpha"), ({"knowledge_alpha": 1.1}, "knowledge_alpha"),
                    ({"g_init": 0.5}, "g_init"), ({"init_ab": "xavier"}, "init_ab"),
                    ({"spectrum_init_scale": -1.0}, "spectrum_init_scale"),
                    ({"adapter_dropout": 1.0}, r"adapter_dropout: must be in \[0, 1\)"),
                    ({"adapter_dropout": -0.1}, "adapter_dropout"), ({"ortho_lambda": -1e-3}, "ortho_lambda"),
                    ({"target_modules": []}, "target_modules: is empty"),
                    ({"target_modules": "re:"}, "empty regex"), ({"target_modules": "re:(q"}, "invalid regex")]:
        with pytest.raises(ValueError, match=msg):
            KnowHiRAConfig(**kw)
    with pytest.raises(ValueError, match="unknown method 'lora2'"):
        get_method("lora2")
    with pytest.raises(ValueError, match="config of no registered method"):
        method_of(object())
    with pytest.raises(ValueError, match="r <= min"):
        adapted("llama", ["k_proj"], r=40)  # k_proj is 24 x 48


def test_sigma_norm_follows_the_loaded_pretrained_weights(tmp_path):
    """Regression for the random-init SVD bug: σ_norm must come from the weights loaded from disk."""
    src = tiny_model("llama", seed=0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # make the "pretrained" spectrum distinctive: strongly decaying
        for name, p in src.named_parameters():
            if name.endswith("proj.weight"):
                u, _, vh = torch.linalg.svd(torch.randn(p.shape, generator=g), full_matrices=False)
                p.copy_(u @ torch.diag(torch.logspace(0, -3, len(_))) @ vh)
    src.save_pretrained(tmp_path / "pretrained")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pretrained")
    build(model, KnowHiRAConfig(r_ab=4, target_modules=["q_proj", "down_proj"], svd_rank_ratio=0.5))
    fresh = tiny_model("llama", seed=0)  # same architecture, random init weights
    for name, layer in adapter_layers(model).items():
        w = dict(src.named_modules())[name].weight
        expected = sigma_norm_from_values(torch.linalg.svdvals(w), 4, 0.5)
        assert torch.allclose(layer.sigma_norm, expected, atol=1e-6)
        rand_w = dict(fresh.named_modules())[name].weight
        random_init = sigma_norm_from_values(torch.linalg.svdvals(rand_w), 4, 0.5)
        assert not torch.allclose(layer.sigma_norm, random_init, atol=1e-2)
    # spectrum-aware init: A's row norms follow σ_norm (top of the spectrum -> larger rows)
    layer = adapter_layers(model)["model.layers.0.mlp.down_proj"]
    assert layer.sigma_norm[0] == 1.0 and layer.sigma_norm[-1] < 0.1


def test_save_load_roundtrip_restores_gate_and_logits(tmp_path):
    model, cfg = adapted("gpt_neo", ["q_proj", "out_proj", "c_fc"])
    randomise_b(model)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.gate.copy_(torch.linspace(-3, 2, 4))  # a trained-looking gate
    method = get_method("knowhira")
    method.save(model, cfg, tmp_path / "adapter")
    with torch.no_grad():
        ref = model(IDS).logits
    saved = read_adapter_config(tmp_path / "adapter")
    assert saved == {"peft_type": "knowhira", **asdict(cfg)}
    assert method.config_from_saved(saved) == cfg
    fresh = tiny_model("gpt_neo")  # same base weights, new process-like start
    assert method.load(fresh, tmp_path / "adapter") is fresh
    for name, layer in adapter_layers(fresh).items():
        assert torch.equal(layer.gate, torch.linspace(-3, 2, 4))
        assert torch.equal(layer.sigma_norm, adapter_layers(model)[name].sigma_norm)
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, ref)
    assert count_trainable(fresh) == count_trainable(model)


def test_load_onto_wrong_base_fails(tmp_path):
    model, cfg = adapted("gpt_neo", ["q_proj"])
    get_method("knowhira").save(model, cfg, tmp_path / "a")
    with pytest.raises(ValueError, match="wrong base model"):
        get_method("knowhira").load(tiny_model("gpt_neo", seed=3), tmp_path / "a")


def sibling_base(how: str):
    """tiny_model("gpt_neo") with its q_proj/v_proj weights replaced by copies of (nearly) the same
    Frobenius norm: sign-flipped, entries permuted, or nudged by 0.1% (what a fine-tune of the base does)."""
    model = tiny_model("gpt_neo")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith(("q_proj", "v_proj")):
                w = m.weight
                if how == "sign":
                    w.neg_()
                elif how == "permuted":
                    w.copy_(w.reshape(-1)[torch.randperm(w.numel(), generator=g)].reshape(w.shape))
                else:
                    w.add_(torch.randn(w.shape, generator=g) * 1e-3 * w.abs().mean())
    return model


@pytest.mark.parametrize("how", ["sign", "permuted", "nudged"])
def test_load_onto_a_sibling_base_with_the_same_norm_fails(how, tmp_path):
    """Issue 29, defect 7: ||W0||_F within 1% let a sibling checkpoint of the base (base vs Instruct, or a
    permuted or sign-flipped copy: the same norm) pass; the saved sample of W0's entries tells them apart."""
    from utils.errors import BadInput

    model, cfg = adapted("gpt_neo", ["q_proj", "v_proj"])
    method = get_method("knowhira")
    method.save(model, cfg, tmp_path / "a")
    other = dict(sibling_base(how).named_modules())
    for name, layer in adapter_layers(model).items():  # the norm check alone passes them
        then = base_weight(layer.base).norm()
        assert abs(other[name].weight.norm() - then) < 1e-2 * then
    with pytest.raises(BadInput, match=r"sampled entries .*wrong base model"):
        method.load(sibling_base(how), tmp_path / "a")
    method.load(tiny_model("gpt_neo"), tmp_path / "a")  # its own base loads


def test_an_adapter_without_the_sample_is_checked_by_its_norm_with_a_note(tmp_path, capsys):
    """Adapters saved before the sample keep the old check (||W0||_F within 1%), saying so."""
    from safetensors.torch import load_file, save_file

    from models.adapter import ADAPTER_WEIGHTS

    model, cfg = adapted("gpt_neo", ["q_proj"])
    method = get_method("knowhira")
    method.save(model, cfg, tmp_path / "a")
    path = tmp_path / "a" / ADAPTER_WEIGHTS
    save_file({k: v for k, v in load_file(str(path)).items() if not k.endswith(".w0_sample")}, str(path))
    method.load(tiny_model("gpt_neo"), tmp_path / "a")
    assert "predates the base-weight sample" in capsys.readouterr().err
    method.load(sibling_base("sign"), tmp_path / "a")  # what the old check cannot tell apart
    with pytest.raises(ValueError, match="wrong base model"):
        method.load(tiny_model("gpt_neo", seed=3), tmp_path / "a")


def test_regex_targets_survive_save_and_load(tmp_path):
    """A regex target is saved as the pattern (knowhira_adapter.json, args.json) and read back as
    the same regex, not as a module-name list."""
    model, cfg = adapted("llama", r"re:model\.layers\.0\..*_proj", variant="hira")
    randomise_b(model)
    method = get_method("hira")
    method.save(model, cfg, tmp_path)
    assert read_adapter_config(tmp_path)["target_modules"] == r"model\.layers\.0\..*_proj"
    loaded = method.load(tiny_model("llama"), tmp_path)
    assert sorted(adapter_layers(loaded)) == sorted(adapter_layers(model))
    assert len(adapter_layers(loaded)) == 7  # q, k, v, o, gate, up, down of block 0
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_adapter_saved_before_the_redesign_still_loads(tmp_path):
    """adapter_config.json of runs made before the redesign holds the old AdapterConfig: the
    layer's names r, scale, dropout (plus fields of other methods); it loads as the same config."""
    model, cfg = adapted("gpt_neo", ["q_proj", "c_fc"], knowledge_alpha=0.3, hira_scale=2.0,
                         adapter_dropout=0.1, g_init=-2.0)
    randomise_b(model)
    method = get_method("knowhira")
    method.save(model, cfg, tmp_path)
    old = {"peft_type": "knowhira", "r": 4, "target_modules": ["q_proj", "c_fc"],
           "knowledge_alpha": 0.3, "adaptive_gating": True, "g_init": -2.0, "svd_rank_ratio": 0.5,
           "init_ab": "spectrum", "spectrum_init_scale": 1.0, "scale": 2.0, "dropout": 0.1,
           "ortho_lambda": 1e-3, "kasa_alpha": 16.0, "kasa_beta": 1e-4, "kasa_gamma": 1e-3}
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(old))
    assert method.config_from_saved(old) == cfg
    loaded = method.load(tiny_model("gpt_neo"), tmp_path).eval()
    layer = adapter_layers(loaded)["transformer.h.0.mlp.c_fc"]
    assert (layer.r, layer.scale, layer.dropout.p, layer.knowledge_alpha) == (4, 2.0, 0.1, 0.3)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model.eval()(IDS).logits)


@pytest.mark.parametrize("arch,targets", ARCH_TARGETS)
def test_merge_export_reload_and_unmerge(arch, targets, tmp_path):
    model, _ = adapted(arch, targets)
    randomise_b(model)
    w0 = {n: base_weight(m.base).detach().clone() for n, m in adapter_layers(model).items()}
    with torch.no_grad():
        ref = model(IDS).logits
        merge_adapters(model)
        assert torch.allclose(model(IDS).logits, ref, atol=1e-5)
        unmerge_adapters(model)
        for n, m in adapter_layers(model).items():
            assert torch.equal(base_weight(m.base), w0[n])  # bit for bit
        assert torch.equal(model(IDS).logits, ref)
    export_merged(model, None, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("Hadamard" in type(m).__name__ for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(IDS).logits, ref, atol=1e-5)


def test_ortho_loss_is_mean_over_layers_and_not_negligible():
    model, _ = adapted("llama", ["q_proj", "down_proj"], r=4)
    per_layer = torch.stack([m.ortho_loss() for m in adapter_layers(model).values()])
    assert torch.allclose(ortho_loss(model), per_layer.mean())
    assert ortho_loss(model).item() > 4  # B = 0 alone contributes ||-I_r||² = r


@pytest.fixture(scope="module")
def smollm2_gguf():
    path = os.environ.get("KNOWHIRA_SMOLLM2_GGUF")
    if not path or not os.path.isfile(path):
        pytest.skip("KNOWHIRA_SMOLLM2_GGUF not set (scripts/test.sh fetches SmolLM2)")
    return path


def _gguf_tensor(path, name):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    t = next(t for t in GGUFReader(path).tensors if t.name == name)
    return torch.tensor(dequantize(t.data, t.tensor_type))


def test_svd_rank_ratio_changes_sigma_norm_on_real_spectrum(smollm2_gguf):
    w = _gguf_tensor(smollm2_gguf, "blk.0.ffn_down.weight")  # SmolLM2 down_proj, 576 x 1536
    s = torch.linalg.svdvals(w)
    narrow, wide = sigma_norm_from_values(s, 8, 0.1), sigma_norm_from_values(s, 8, 1.0)
    assert narrow[0] == wide[0] == 1.0
    assert torch.allclose(wide[-1], s[-1] / s[0])  # ratio 1 reaches the smallest singular value
    assert torch.allclose(narrow[-1], s[57] / s[0])  # k = round(0.1·576) = 58 -> rank 57
    assert (narrow[1:] - wide[1:]).abs().min() > 0.01


def test_real_smollm2_sigma_norm_from_loaded_weights(smollm2_gguf):
    """Through the real loader: σ_norm equals svdvals of the weight read independently from GGUF."""
    from models.get_models import get_knowhira_models

    model, tok, cfg = get_knowhira_models(smollm2_gguf, r_ab=8, target_modules=r"re:model\.layers\.0\.mlp\.down_proj",
                                          svd_rank_ratio=0.5)  # one layer: one SVD, not thirty
    layer = adapter_layers(model)["model.layers.0.mlp.down_proj"]
    expected = sigma_norm_from_values(torch.linalg.svdvals(_gguf_tensor(smollm2_gguf, "blk.0.ffn_down.weight")), 8, 0.5)
    assert torch.allclose(layer.sigma_norm, expected, atol=1e-5)
    assert count_trainable(model) == 8 * (576 + 1536) + 8
