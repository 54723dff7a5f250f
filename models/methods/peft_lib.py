"""The methods the `peft` library implements: LoRA, DoRA (LoraConfig(use_dora=True)) and IA3, saved in
peft's own adapter format and merged with peft's merge_and_unload. Their saved folder IS a stock peft
adapter: `--export peft` copies it, and `--ckpt ADAPTER_DIR` reads one trained elsewhere."""
import copy
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from models.files import PEFT_CONFIG, PEFT_WEIGHTS
from models.layers import _is_conv1d, base_weight
from models.methods.base import LowRankConfig, Method, TargetsConfig, record_targets
from models.methods.capabilities import Analysable, LayerDelta, Mergeable, PeftInterop
from utils.dist import gather_state, is_sharded
from utils.errors import BadInput
from utils.options import option

PEFT_PREFIX = "base_model.model."  # peft's prefix of a causal LM's module names in its files


def peft_targets(value):
    """peft's target_modules (a list, 'all-linear', or a regex string) as ours (for the record)."""
    if value is None or isinstance(value, list) or value == "all-linear":
        return value
    return "re:" + value


@dataclass
class LoRAConfig(LowRankConfig):
    lora_alpha: float = option(16.0, "α of LoRA/DoRA (scale α/r)")


@dataclass
class DoRAConfig(LoRAConfig):
    pass


@dataclass
class IA3MethodConfig(TargetsConfig):
    pass


class PeftMethod(Method, Mergeable, PeftInterop, Analysable):
    """Shared by lora, dora and ia3: peft builds, saves, loads and merges."""

    peft_type: str  # peft's name of the adapter type
    use_dora: bool = False

    def peft_config(self, cfg, targets, model_type: str):
        """peft's config for `cfg` on the resolved `targets` of a `model_type` model (what build passes)."""
        raise NotImplementedError

    def build(self, model, cfg):
        from peft import get_peft_model

        record_targets(model, cfg)  # the default list, recorded in args.json (peft's file has it too)
        return get_peft_model(model, self.peft_config(cfg, cfg.target_modules, model.config.model_type))

    def save(self, model, cfg, out_dir, write=True):
        """peft's format; under FSDP2 from the gathered trainable tensors."""
        state = None
        if is_sharded(model):
            state = gather_state(((n, p) for n, p in model.named_parameters() if p.requires_grad), write)
        if write:
            model.save_pretrained(str(out_dir), state_dict=state)

    def load(self, model, saved_dir):
        from peft import PeftModel

        from models.adapter import load_checked

        if (Path(saved_dir) / PEFT_WEIGHTS).is_file():  # a damaged file or NaN: one line naming it
            load_checked(Path(saved_dir) / PEFT_WEIGHTS)
        try:
            with warnings.catch_warnings():  # peft calls transformers' deprecated name: not the user's concern
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                return PeftModel.from_pretrained(model, str(saved_dir))
        except RuntimeError as e:  # an adapter made for a base of another width: torch's 40-line size mismatch
            mismatch = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), None)
            if mismatch is None:
                raise
            raise BadInput(f"{Path(saved_dir) / PEFT_WEIGHTS}: made for another base model than "
                           f"{type(model).__name__} {getattr(model.config, 'name_or_path', '')} ({mismatch[:200]})") from None

    def merge_and_unload(self, model):
        return model.merge_and_unload()

    # ---- the stock peft ecosystem -------------------------------------------------------------
    def export_peft(self, out_dir, *, saved_dir, base_model_name, load_model):
        """The saved folder is peft's own adapter: copied file by file (the model is not loaded)."""
        files = [f for f in sorted(Path(saved_dir).iterdir()) if f.is_file()]
        if not (Path(saved_dir) / PEFT_CONFIG).is_file():
            raise BadInput(f"no {PEFT_CONFIG} in {saved_dir}")
        for f in files:
            shutil.copyfile(f, Path(out_dir) / f.name)
        return f"copy of the peft {self.reads_peft} adapter in {saved_dir}"

    def reads_peft_config(self, config):
        return config.get("peft_type") == self.peft_type and bool(config.get("use_dora")) == self.use_dora

    def load_peft(self, model, adapter_dir, config):
        return self.load(model, adapter_dir), self.config_from_peft(config)

    def config_from_peft(self, config: dict):
        """This method's config describing a stock peft adapter (for the results' record)."""
        return self.config_cls(target_modules=peft_targets(config.get("target_modules")))

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
    peft_type, reads_peft = "LORA", "LORA"

    def config_from_peft(self, config):
        return self.config_cls(r_ab=config.get("r", 8), lora_alpha=config.get("lora_alpha", 8),
                               adapter_dropout=config.get("lora_dropout") or 0.0,
                               target_modules=peft_targets(config.get("target_modules")))

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
    use_dora, reads_peft = True, "LORA with use_dora"
    delta = PeftMethod.delta  # W_merged − W0: includes the magnitude rescaling

    def rank_bound(self, r, shape, w0_rank):
        """ΔW = diag(c) W0 + diag(m/‖W0 + ΔW_lora‖) ΔW_lora: rank <= rank(W0) + r."""
        return min(w0_rank + r, min(shape)) if r else min(shape)


class IA3(PeftMethod):
    name = "ia3"
    config_cls = IA3MethodConfig
    summary = "learned rescaling of W0's rows (attention) or columns (feed-forward) (peft)"
    peft_type, reads_peft = "IA3", "IA3"

    def peft_config(self, cfg, targets, model_type):
        from peft import IA3Config
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF

        if isinstance(targets, str):
            raise BadInput("ia3 needs a list of target module names (its feed-forward subset is "
                           "taken from peft's per-architecture mapping)")
        # a target is feed-forward if it names one of peft's entries (e.g. gpt2's "mlp.c_proj") or
        # a more specific path ending in one ("h.0.mlp.c_proj", "mlp.down_proj")
        feedforward = [t for t in targets
                       if any(t == f or t.endswith("." + f) for f in FF.get(model_type, []))]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")

    def rank_bound(self, r, shape, w0_rank):
        return min(w0_rank, min(shape))  # W0 scaled row- or column-wise
