"""What a method MAY do beyond its required core (models/methods/base.py `Method`: build, save, load).
Each capability is one small mixin holding its operations and their defaults; a method class lists
the ones it has (`class HiRA(AdapterMethod, TrainingHooks, PeftInterop)`), and a caller asks
`isinstance(method, Capability)` (or the helper below) instead of relying on defaults of a big base.

    TrainingHooks  regularizer, lr_scales, init_batches/initialise   training/recipe.py
    Mergeable      merge_and_unload                                  eval (merged weights), --export merged
    PeftInterop    export_peft; reads_peft, reads_peft_config,        --export peft, --ckpt PEFT_ADAPTER_DIR
                   load_peft
    Analysable     layer_modules, deltas, rank_bound, analysis_note   analyze_adapter.py, analysis/

Which built-in method has which:

    knowhira, hira, hira_sb, kasa   AdapterMethod (Mergeable, Analysable) + TrainingHooks + PeftInterop
    lora, dora, ia3                 PeftMethod (Mergeable, PeftInterop, Analysable)
    fft                             Mergeable (the saved model is plain already), Analysable
"""
from dataclasses import dataclass, field
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import nn

from utils.errors import BadInput


# ---- training hooks ------------------------------------------------------------------------------
class Regularizer(NamedTuple):
    """The method's unweighted regulariser as a function of the (unwrapped) model, and its weight
    in L = L_task + weight · fn(model)."""

    fn: Callable[[nn.Module], torch.Tensor]
    weight: float


class TrainingHooks:
    """What the training recipe asks of a method beyond building it; each default is "nothing"."""

    def regularizer(self, cfg) -> Regularizer | None:
        """The term added to the task loss, or None."""
        return None

    def lr_scales(self, cfg) -> dict[str, float]:
        """{parameter-name suffix: multiplier of --lr} for parameters that train at another rate
        (their own optimizer group; the schedule scales every group alike). Empty: one rate."""
        return {}

    def init_batches(self, cfg) -> int:
        """Training batches the method's data-dependent initialisation needs (0: none)."""
        return 0

    def initialise(self, model: nn.Module, cfg, batches: list, loss_fn) -> str | None:
        """Data-dependent initialisation from `batches` (loss_fn(model, batch) -> scalar); returns a
        line to print, or None."""
        return None


_NO_HOOKS = TrainingHooks()


def training_hooks(method) -> TrainingHooks:
    """The method's training hooks; for a method without them, the defaults (no regulariser, one
    learning rate, no data-dependent initialisation)."""
    return method if isinstance(method, TrainingHooks) else _NO_HOOKS


# ---- merging ---------------------------------------------------------------------------------------
class Mergeable:
    """A method whose trained model can be turned into a plain model of the base architecture."""

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        """A plain model computing what the adapted one computes."""
        raise NotImplementedError


# ---- the stock peft ecosystem (models/export.py) ---------------------------------------------------
class PeftInterop:
    """Writing the trained state as a stock peft adapter (`export_peft`, required of this capability)
    and, optionally, reading stock peft adapters (set `reads_peft`, implement `reads_peft_config` and
    `load_peft`)."""

    # the stock peft adapter type this method reads under `--ckpt ADAPTER_DIR` (text for messages)
    reads_peft: ClassVar[str | None] = None

    def export_peft(self, out_dir, *, saved_dir, base_model_name: str, load_model) -> str:
        """Write the trained state as a stock peft adapter into `out_dir` (an empty folder) and
        return a short description of what was written. `saved_dir`: the run's best/ or final/;
        `load_model()`: the base model with the trained state on it (unmerged), loaded on demand;
        `base_model_name`: for adapter_config.json's base_model_name_or_path."""
        raise NotImplementedError

    def reads_peft_config(self, config: dict) -> bool:
        """Whether a stock peft adapter with this adapter_config.json is this method's."""
        return False

    def load_peft(self, model: nn.Module, adapter_dir, config: dict):
        """(model with the stock peft adapter in `adapter_dir` on it, this method's config describing
        it); only called when reads_peft_config(config)."""
        raise ValueError(f"{self.name} does not read peft adapters")


def peft_exporter(method) -> PeftInterop:
    """The method, if it has a stock peft form; else a one-line refusal pointing to --export merged."""
    if isinstance(method, PeftInterop):
        return method
    why = " (every weight is trained)" if method.saves == "merged" else ""
    raise BadInput(f"{method.name} has no adapter form{why}; use --export merged")


# ---- analysis (analyze_adapter.py, analysis/deltas.py) ---------------------------------------------
@dataclass
class LayerDelta:
    """One adapted layer's update for the analysis (analysis/deltas.py)."""

    name: str
    dw: torch.Tensor  # ΔW, out x in, float32
    w0: torch.Tensor  # the PRETRAINED W0, out x in, float32
    base: torch.Tensor  # the weight ΔW is added to (W0; KaSA: the truncated W0'), float32
    r: int | None
    extra: dict = field(default_factory=dict)  # scalar method-specific numbers
    vectors: dict = field(default_factory=dict)  # per-rank vectors (KnowHiRA: sigma_norm, gate, core)


class Analysable:
    """The per-layer update ΔW of a trained model, for analyze_adapter.py."""

    analysis_note: ClassVar[str | None] = None  # printed under the adapter analysis table

    def layer_modules(self, model: nn.Module, targets) -> dict[str, nn.Module]:
        """Adapted layers by (base-model) module name. A method that saves the whole model
        (`saves == "merged"`) is asked on the BASE model with the run's `targets`; any other on the
        model with the trained state loaded."""
        raise NotImplementedError

    def deltas(self, modules: dict, names: list[str], trained_dir):
        """Yield one LayerDelta per name (the caller drops each before the next is built)."""
        raise NotImplementedError

    def rank_bound(self, r: int | None, shape, w0_rank: int) -> int:
        """An upper bound on rank(ΔW) of one layer (min(out, in) where nothing better holds)."""
        return min(shape)
