"""What a method is: its config dataclass and its required core, `Method` (build, save, load); the
optional capabilities (training hooks, merge, peft interop, analysis) are the mixins of
models/methods/capabilities.py. A method file subclasses `Method` (or `AdapterMethod` for layers written
in this repository) plus the capabilities it has, and registers it (models/methods/__init__.py); nothing
outside the method files and the registry looks at method names.

Shared option groups (one definition each; a method's config inherits the ones it uses):
    TargetsConfig  --target_modules
    LowRankConfig  + --r_ab, --adapter_dropout
"""
import re
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from models import adapter as layers
from models.compat import FLAG_ALIASES, adapter_file, check_adapter_keys, upgrade_adapter_config
from models.files import ADAPTER_CONFIG
from models.methods.capabilities import Analysable, LayerDelta, Mergeable
from models.targets import resolve_targets
from utils.errors import BadInput
from utils.options import Options, in_range, option, positive


# characters of a regex that no module name has (names are identifiers, digits and dots)
_REGEX_CHARS = frozenset("\\^$*+?()[]{}|")


def parse_targets(text: str):
    """'q_proj,v_proj' -> list of suffixes; 'all-linear'; 're:<regex>' -> the regex (compiled here,
    so a bad one is a one-line error at parse time).

    The parsed regex is stored without 're:' (knowhira_adapter.json, args.json, and so in runs made
    before the redesign), and a stored value is parsed again when it is read back; so text with a
    regex character that no module name can hold is that regex too, and parsing is idempotent."""
    if text == "all-linear":
        return text
    if text.startswith("re:") or _REGEX_CHARS & set(text):
        pattern = text[3:] if text.startswith("re:") else text
        if not pattern:
            raise BadInput("empty regex after 're:'")
        try:
            re.compile(pattern)
        except re.error as e:
            raise BadInput(f"invalid regex {pattern!r}: {e}") from None
        return pattern
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise BadInput("empty target list")
    return names


def _targets_check(v):
    return "is empty" if v is not None and not v else None


def record_targets(model: nn.Module, cfg) -> None:
    """Set cfg.target_modules to the targets `model` is built with (None: its architecture's default
    list, models/targets.py), so that args.json and the saved adapter config record them."""
    if cfg.target_modules is None:
        cfg.target_modules = resolve_targets(None, getattr(getattr(model, "config", None), "model_type", None))


@dataclass
class MethodConfig(Options):
    """Options of a method (each method has its own class; the registry maps it to the method)."""


@dataclass
class TargetsConfig(MethodConfig):
    target_modules: list[str] | str | None = option(
        None, "comma list of module-name suffixes, 'all-linear', or 're:<regex>' (full names); "
              "default: per architecture (models/targets.py)", parse=parse_targets, check=_targets_check)


@dataclass
class LowRankConfig(TargetsConfig):
    r_ab: int = option(32, "rank r (B out x r, A r x in; LoRA/DoRA/KaSA rank; HiRA-SB's R is r x r)",
                       check=positive)
    adapter_dropout: float = option(0.0, "dropout on the adapter path's input", check=in_range(0, 1, high_open=True),
                                    aliases=FLAG_ALIASES["adapter_dropout"])


class Method:
    """A fine-tuning method's required core: `name`, `config_cls`, `summary`, and `build`, `save`, `load`.
    Everything else is an optional capability (models/methods/capabilities.py: TrainingHooks,
    Mergeable, PeftInterop, Analysable) that a subclass lists among its bases."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    summary: ClassVar[str]
    # what `save` writes: "adapter" (tensors on top of the base) or "merged" (the whole model)
    saves: ClassVar[str] = "adapter"

    def build(self, model: nn.Module, cfg) -> nn.Module:
        """Make `model` trainable for this method (after the pretrained weights are loaded). A config with
        target_modules is first given the resolved list (`record_targets`), which args.json and the saved
        config then record; AdapterMethod and the peft methods do so."""
        raise NotImplementedError

    def save(self, model: nn.Module, cfg, out_dir, write: bool = True) -> None:
        """Write the trained state into `out_dir` (made here if absent: utils/atomic.py's writers do).
        Called on every rank (under FSDP2 gathering is collective); only `write=True` writes."""
        raise NotImplementedError

    def load(self, model: nn.Module, saved_dir) -> nn.Module:
        """`model` (the pretrained base) with the trained state from `saved_dir` on it."""
        raise NotImplementedError

    def config_from_saved(self, values: dict):
        """The config recorded in a run's args.json or saved adapter config."""
        return self.config_cls.from_values(values)


class AdapterMethod(Method, Mergeable, Analysable):
    """A method whose layers are written in this repository: swap each target for `make_layer`,
    save the layers' `saved_tensors` plus a ||W0||_F fingerprint, merge with the layers' own merge,
    analyse each layer's `delta_weight()`."""

    def make_layer(self, base: nn.Module, cfg, compute: bool) -> nn.Module:
        """The adapter layer around `base`; `compute=False` when loading (no SVD: saved values follow)."""
        raise NotImplementedError

    def after_inject(self, model: nn.Module, cfg, compute: bool) -> None:
        """Whole-model initialisation after injection (e.g. KnowHiRA's batched σ_norm)."""

    def build(self, model, cfg, compute: bool = True):
        record_targets(model, cfg)  # the default list, recorded (a saved null: resolved here, as before)
        layers.inject(model, cfg.target_modules, lambda base: self.make_layer(base, cfg, compute))
        self.after_inject(model, cfg, compute)
        return model

    def save(self, model, cfg, out_dir, write=True):
        layers.save_adapter(model, {"peft_type": self.name, **asdict(cfg)}, out_dir, write)

    def load(self, model, saved_dir):
        saved = layers.read_adapter_config(saved_dir)
        check_adapter_keys(saved, adapter_file(saved_dir, ADAPTER_CONFIG), self.name)
        cfg = self.config_from_saved(saved)
        self.build(model, cfg, compute=False)
        layers.load_adapter_tensors(model, saved_dir)
        return model

    def merge_and_unload(self, model):
        return layers.merge_and_unload(model)

    def layer_modules(self, model, targets):
        return layers.adapter_layers(model)

    def deltas(self, modules, names, trained_dir):
        for name in names:
            yield self.delta(name, modules[name])

    @torch.no_grad()
    def delta(self, name: str, layer: nn.Module) -> LayerDelta:
        w0 = layers.base_weight(layer.base).detach().float()
        return LayerDelta(name, layer.delta_weight().detach().float(), w0, w0, layer.r)

    def config_from_saved(self, values: dict):
        return super().config_from_saved(upgrade_adapter_config(values))  # older runs' key names too
