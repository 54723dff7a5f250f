"""Full fine-tuning: every parameter trains, embeddings and norms included (the LLM-Adapters
baseline). The trained model itself is saved (model.safetensors + config.json), not through
save_pretrained, which refuses models loaded from GGUF."""
from dataclasses import dataclass
from pathlib import Path

import torch

from models.adapter import find_targets
from models.layers import _is_conv1d, base_weight
from models.methods.base import Method, MethodConfig
from models.methods.capabilities import Analysable, LayerDelta, Mergeable
from utils.atomic import atomic_write_bytes, atomic_write_path
from utils.dist import gather_state
from utils.errors import BadInput

WEIGHTS = "model.safetensors"


@dataclass
class FFTConfig(MethodConfig):
    pass


class SavedTensors:
    """Lazy access to the tensors of the *.safetensors files in a folder."""

    def __init__(self, folder):
        from safetensors import safe_open

        self.files = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                for key in h.keys():
                    self.files[key] = f
        if not self.files:
            raise BadInput(f"no *.safetensors in {folder}")

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self.files:
            raise KeyError(f"{key} is not in the saved model")
        with safe_open(str(self.files[key]), framework="pt") as h:
            return h.get_tensor(key)


class FullFineTuning(Method, Mergeable, Analysable):
    name = "fft"
    config_cls = FFTConfig
    summary = "every parameter, embeddings and norms included (the LLM-Adapters baseline)"
    saves = "merged"  # no stock peft form: `--export peft` refuses (capabilities.peft_exporter)

    def build(self, model, cfg):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, cfg, out_dir, write=True):
        """Every weight to model.safetensors (+ config.json), a tied weight once under its first
        name; under FSDP2 gathered one tensor at a time onto the writing rank's CPU."""
        from safetensors.torch import save_file

        param_id = {n: id(p) for n, p in model.named_parameters(remove_duplicate=False)}
        seen, items = set(), []
        for name, t in model.state_dict().items():
            if name in param_id:
                if param_id[name] in seen:
                    continue  # tied to a parameter already stored (e.g. lm_head = embeddings)
                seen.add(param_id[name])
            items.append((name, t))
        state = gather_state(items, write)
        if not write:
            return
        out_dir = Path(out_dir)
        tensors = {k: v.contiguous() for k, v in state.items()}
        atomic_write_path(out_dir / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        atomic_write_bytes(out_dir / "config.json", model.config.to_json_string().encode())

    def load(self, model, saved_dir):
        from models.adapter import load_checked

        state = {}
        for f in sorted(Path(saved_dir).glob("*.safetensors")):
            state.update(load_checked(f))  # a damaged file or NaN weights: an error naming the file
        missing, unexpected = model.load_state_dict(state, strict=False)
        params = dict(model.named_parameters(remove_duplicate=False))
        loaded = {id(params[k]) for k in state if k in params}
        missing = [k for k in missing if k not in params or id(params[k]) not in loaded]  # tied
        if missing or unexpected:
            raise BadInput(f"{saved_dir} does not fit the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        return model

    def merge_and_unload(self, model):
        return model  # the trained model is a plain model already

    def layer_modules(self, model, targets):
        """The `targets` linear layers of the BASE model (ΔW = W_trained − W0 from the saved file)."""
        modules = dict(model.named_modules())
        return {n: modules[n] for n in find_targets(model, targets)}

    def deltas(self, modules, names, trained_dir):
        saved = SavedTensors(trained_dir)
        for name in names:
            layer = modules[name]
            with torch.no_grad():
                w0 = base_weight(layer).detach()
                trained = saved.get(f"{name}.weight").to(w0.device)
                trained = trained.t() if _is_conv1d(layer) else trained
                dw = (trained.double() - w0.double()).float()
            yield LayerDelta(name, dw, w0.float(), w0.float(), None)
