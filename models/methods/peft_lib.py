"""The methods the `peft` library implements: LoRA, DoRA (LoraConfig(use_dora=True)) and IA3, saved in
peft's own adapter format and merged with peft's merge_and_unload."""
import copy
from dataclasses import dataclass

import torch

from models.hadamard import _is_conv1d, base_weight
from models.methods.base import LayerDelta, LowRankConfig, Method, TargetsConfig
from utils.dist import gather_state, is_sharded
from utils.options import option

PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAConfig(LowRankConfig):
    lora_alpha: float = option(16.0, "α of LoRA/DoRA (scale α/r)")


@dataclass
class DoRAConfig(LoRAConfig):
    pass


@dataclass
class IA3MethodConfig(TargetsConfig):
    pass


class PeftMethod(Method):
    """Shared by lora, dora and ia3: peft builds, saves, loads and merges."""

    def peft_config(self, cfg, targets, model_type: str):
        """peft's config for `cfg` on the resolved `targets` of a `model_type` model (what build passes)."""
        raise NotImplementedError

    def build(self, model, cfg):
        from peft import get_peft_model

        from models.get_models import default_targets

        targets = cfg.target_modules or default_targets(model.config.model_type)
        return get_peft_model(model, self.peft_config(cfg, targets, model.config.model_type))

    def save(self, model, cfg, out_dir, write=True):
        """peft's format; under FSDP2 from the gathered trainable tensors."""
        state = None
        if is_sharded(model):
            state = gather_state(((n, p) for n, p in model.named_parameters() if p.requires_grad), write)
        if write:
            model.save_pretrained(str(out_dir), state_dict=state)

    def load(self, model, saved_dir):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(saved_dir))

    def merge_and_unload(self, model):
        return model.merge_and_unload()

    def layer_modules(self, model, targets):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return {n[len(PEFT_PREFIX):] if n.startswith(PEFT_PREFIX) else n: m
                for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}

    def deltas(self, modules, names, trained_dir):
        for name in names:
            yield self.delta(name, modules[name])

    @torch.no_grad()
    def delta(self, name, layer) -> LayerDelta:
        """W_merged − W0 from merging a float64 copy of the one layer (peft's own merge, so DoRA's
        magnitude rescaling is included; in float64 the cancellation error is ~1e-16 ‖W0‖)."""
        adapter = layer.active_adapters[0]
        w0 = base_weight(layer.get_base_layer()).detach()
        cp = copy.deepcopy(layer).double()
        cp.merge(adapter_names=[adapter])
        dw = base_weight(cp.get_base_layer()) - w0.double()
        del cp
        return LayerDelta(name, dw.float(), w0.float(), w0.float(), self.rank_of(layer, adapter))

    @staticmethod
    def rank_of(layer, adapter):
        return layer.r.get(adapter) if isinstance(getattr(layer, "r", None), dict) else None


class LoRA(PeftMethod):
    name = "lora"
    config_cls = LoRAConfig
    summary = "W0 + (α/r) B A (peft)"

    def peft_config(self, cfg, targets, model_type):
        from peft import LoraConfig

        return LoraConfig(r=cfg.r_ab, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.adapter_dropout,
                          target_modules=targets, use_dora=isinstance(cfg, DoRAConfig),
                          task_type="CAUSAL_LM")

    @torch.no_grad()
    def delta(self, name, layer) -> LayerDelta:
        """peft's get_delta_weight = scaling · B A on a float64 copy (the exact low-rank product)."""
        adapter = layer.active_adapters[0]
        base = layer.get_base_layer()
        w0 = base_weight(base).detach()
        d = copy.deepcopy(layer).double().get_delta_weight(adapter)
        dw = d.t() if _is_conv1d(base) else d
        return LayerDelta(name, dw.float(), w0.float(), w0.float(), self.rank_of(layer, adapter))

    def rank_bound(self, r, shape, w0_rank):
        return min(r, *shape) if r else min(shape)


class DoRA(LoRA):
    name = "dora"
    config_cls = DoRAConfig
    summary = "LoRA with a learned magnitude per output row (peft, use_dora)"
    delta = PeftMethod.delta  # W_merged − W0: includes the magnitude rescaling

    def rank_bound(self, r, shape, w0_rank):
        """ΔW = diag(c) W0 + diag(m/‖W0 + ΔW_lora‖) ΔW_lora: rank <= rank(W0) + r."""
        return min(w0_rank + r, min(shape)) if r else min(shape)


class IA3(PeftMethod):
    name = "ia3"
    config_cls = IA3MethodConfig
    summary = "learned rescaling of W0's rows (attention) or columns (feed-forward) (peft)"

    def peft_config(self, cfg, targets, model_type):
        from peft import IA3Config
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF

        if isinstance(targets, str):
            raise ValueError("ia3 needs a list of target module names (its feed-forward subset is "
                             "taken from peft's per-architecture mapping)")
        # a target is feed-forward if it names one of peft's entries (e.g. gpt2's "mlp.c_proj") or
        # a more specific path ending in one ("h.0.mlp.c_proj", "mlp.down_proj")
        feedforward = [t for t in targets
                       if any(t == f or t.endswith("." + f) for f in FF.get(model_type, []))]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")

    def rank_bound(self, r, shape, w0_rank):
        return min(w0_rank, min(shape))  # W0 scaled row- or column-wise
