"""The methods: the registry (registry.py: method name -> Method) with the built-in methods registered
below; a new method is one file defining a config dataclass and a Method subclass (the required core:
base.py; plus the optional capabilities it has: capabilities.py), plus one `register(...)` call (see
docs/methods.md "How to add a method"). Everything else asks the registry:

    method = get_method("knowhira"); cfg = method.config_cls(r_ab=32, ...)
    model = build(model, cfg)            # the method is found from the config's class
"""
from models.methods.base import AdapterMethod, Method, MethodConfig  # noqa: F401
from models.methods.capabilities import (Analysable, Mergeable, PeftInterop, Regularizer,  # noqa: F401
                                         TrainingHooks, training_hooks)
from models.methods.registry import (REGISTRY, build, get_method, method_for_peft_config,  # noqa: F401
                                     method_of, register)


def _register_builtins() -> None:
    from models.methods.fft import FullFineTuning
    from models.methods.hira import HiRA
    from models.methods.hira_sb import HiRASB
    from models.methods.kasa import KaSA
    from models.methods.knowhira import KnowHiRA
    from models.methods.peft_lib import IA3, DoRA, LoRA

    for cls in (KnowHiRA, HiRA, HiRASB, KaSA, LoRA, DoRA, IA3, FullFineTuning):
        register(cls())


_register_builtins()
