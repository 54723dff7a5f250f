"""HiRA (Huang et al., 2025): W = W0 + s · W0 ⊙ (B A), the Hadamard layer with core M = I
(models/hadamard.py; equals peft's HiRA at s = 1, tested to 1e-12), plus λ · L_ortho (the
KnowHiRA regulariser; `--ortho_lambda 0` is plain HiRA).

The stock peft form, for the whole Hadamard family (inherited by knowhira and hira_sb):

    W0 + s · W0 ⊙ (B M A) = W0 + W0 ⊙ (B′ A),   B′ = s · B · M   (= s · bm())

which is peft's HiRA (W0 + W0 ⊙ (B A), `peft_type: "HIRA"`) with B′ in place of B: `export_peft`
writes it, so a KnowHiRA or HiRA-SB run reaches peft users as a HiRA adapter whose B carries the
core. `load_peft` reads a stock peft HiRA adapter back into this method's layers (s = 1, M = I).
"""
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from models.adapter import adapter_layers
from models.files import PEFT_WEIGHTS
from models.hadamard import HadamardLinear
from models.layers import _is_conv1d
from models.methods.base import AdapterMethod, LowRankConfig
from models.methods.capabilities import PeftInterop, Regularizer, TrainingHooks
from models.methods.peft_lib import PEFT_PREFIX
from utils.errors import BadInput
from utils.options import non_negative, option

_PEFT_KEY = re.compile(re.escape(PEFT_PREFIX) + r"(.+)\.(hira_A|hira_B)")


@dataclass
class HadamardConfig(LowRankConfig):
    hira_scale: float = option(1.0, "s in W = W0 + s·W0⊙(BMA)")


@dataclass
class HiRAConfig(HadamardConfig):
    ortho_lambda: float = option(1e-3, "λ in L = L_task + λ · mean_layers L_ortho", check=non_negative)


def ortho_loss(model) -> torch.Tensor:
    """Mean over adapted layers of ||A Aᵀ - I||_F² + ||Bᵀ B - I||_F² (≈ 1.44 r per layer at init)."""
    return torch.stack([m.ortho_loss() for m in adapter_layers(model).values()]).mean()


class HiRA(AdapterMethod, TrainingHooks, PeftInterop):
    name = "hira"
    config_cls = HiRAConfig
    summary = "W0 + s·W0⊙(B A) (M = I; --ortho_lambda 0 for plain HiRA)"
    layer_cls = HadamardLinear
    reads_peft = "HIRA"  # a stock peft HiRA adapter is this method with s = 1 (subclasses: None)

    def make_layer(self, base, cfg, compute):
        return self.layer_cls(base, cfg)

    def regularizer(self, cfg):
        """λ · L_ortho, L_ortho = mean over layers of ||A Aᵀ − I||_F² + ||Bᵀ B − I||_F²."""
        return Regularizer(ortho_loss, cfg.ortho_lambda) if cfg.ortho_lambda > 0 else None

    def rank_bound(self, r, shape, w0_rank):
        """rank(W0 ⊙ BMA) <= rank(W0) · rank(BMA) <= rank(W0) · r (Hadamard product of rank-a and
        rank-b matrices has rank <= a·b), capped by min(out, in)."""
        return min(w0_rank * r, min(shape)) if r else min(shape)

    # ---- stock peft HiRA ----------------------------------------------------------------------
    def reads_peft_config(self, config):
        return self.reads_peft is not None and config.get("peft_type") == "HIRA"

    @torch.no_grad()
    def export_peft(self, out_dir, *, saved_dir, base_model_name, load_model):
        """peft's HiRA: adapter_config.json (peft's own HiraConfig: r, the exact module names,
        fan_in_fan_out for GPT-2's Conv1D) and adapter_model.safetensors with, per layer,
        base_model.model.<name>.hira_A = A (r x in) and .hira_B = B′ = s·B·M (out x r), fp32."""
        from peft import HiraConfig
        from safetensors.torch import save_file

        layers = adapter_layers(load_model())
        ranks = {layer.r for layer in layers.values()}
        if len(ranks) != 1:
            raise ValueError(f"layers of different ranks {sorted(ranks)}: not one peft HiRA config")
        if any(layer.merged for layer in layers.values()):
            raise ValueError("the adapter is merged into the weights; export it before merging")
        dropout = {layer.dropout.p if layer.dropout is not None else 0.0 for layer in layers.values()}
        config = HiraConfig(r=ranks.pop(), target_modules=sorted(layers), task_type="CAUSAL_LM",
                            fan_in_fan_out=any(_is_conv1d(m.base) for m in layers.values()),
                            hira_dropout=max(dropout), base_model_name_or_path=base_model_name,
                            inference_mode=True)
        tensors = {}
        for name, layer in layers.items():
            tensors[f"{PEFT_PREFIX}{name}.hira_A"] = layer.hira_A.detach().float().cpu().contiguous()
            tensors[f"{PEFT_PREFIX}{name}.hira_B"] = (layer.scale * layer.bm()).detach().float().cpu().contiguous()
        config.save_pretrained(str(out_dir))
        save_file(tensors, str(Path(out_dir) / PEFT_WEIGHTS), metadata={"format": "pt"})
        return f"peft HiRA adapter, {len(layers)} layers, r = {config.r}, B′ = s·B·M"

    @torch.no_grad()
    def load_peft(self, model, adapter_dir, config):
        """A stock peft HiRA adapter as this method's layers with s = 1, M = I: the adapted layers
        are those its tensors name (so layers_to_transform, exclude_modules and regex targets need no
        reimplementation); per-layer ranks, embedding targets and modules_to_save are refused."""
        from models.adapter import load_checked

        path = Path(adapter_dir) / PEFT_WEIGHTS
        if not path.is_file():
            raise BadInput(f"no {PEFT_WEIGHTS} in {adapter_dir} (a pickled .bin is not read)")
        factors = {}
        for key, value in load_checked(path).items():
            match = _PEFT_KEY.fullmatch(key)
            if match is None:
                raise BadInput(f"{path}: tensor {key} is not a HiRA factor of a linear layer "
                               f"(embedding targets and modules_to_save are not read)")
            factors.setdefault(match[1], {})[match[2]] = value
        incomplete = sorted(n for n, f in factors.items() if len(f) != 2)
        if not factors or incomplete:
            raise BadInput(f"{path}: no hira_A/hira_B pair for {incomplete[:3] or 'any layer'}")
        ranks = {f["hira_A"].shape[0] for f in factors.values()}
        if len(ranks) != 1:
            raise BadInput(f"{path}: layers of different ranks {sorted(ranks)} are not read")
        cfg = self.config_cls(r_ab=ranks.pop(), target_modules=sorted(factors), hira_scale=1.0,
                              adapter_dropout=float(config.get("hira_dropout") or 0.0), ortho_lambda=0.0)
        self.build(model, cfg, compute=False)
        layers = adapter_layers(model)
        for name, f in factors.items():
            for key, value in f.items():
                target = getattr(layers[name], key)
                if target.shape != value.shape:
                    raise BadInput(f"{path}: {name}.{key} is {tuple(value.shape)}, this base model's "
                                   f"layer needs {tuple(target.shape)}: another base model?")
                target.copy_(value)
        return model, cfg
