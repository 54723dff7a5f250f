"""The registry: method name -> Method. Built-in methods register below; a new method is one file
defining a config dataclass and a Method subclass, plus one `register(...)` call (see docs/methods.md "How to
add a method"). Everything else asks the registry:

    method = get_method("knowhira"); cfg = method.config_cls(r_ab=32, ...)
    model = build(model, cfg)            # the method is found from the config's class
"""
from models.methods.base import AdapterMethod, Method, MethodConfig, Regularizer  # noqa: F401

REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (an instance of a Method subclass); its name and config class must be new."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    if any(m.config_cls is method.config_cls for m in REGISTRY.values()):
        raise ValueError(f"config class {method.config_cls.__name__} already belongs to another method")
    REGISTRY[method.name] = method
    return method


def method_names() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def method_of(cfg) -> Method:
    """The method whose config class `cfg` is (exactly)."""
    for m in REGISTRY.values():
        if type(cfg) is m.config_cls:
            return m
    raise ValueError(f"{type(cfg).__name__} is the config of no registered method")


def method_for_peft_config(config: dict) -> Method:
    """The method that reads a stock peft adapter with this adapter_config.json (the first
    registered one that claims it)."""
    for m in REGISTRY.values():
        if m.reads_peft_config(config):
            return m
    readable = ", ".join(f"{m.reads_peft} ({m.name})" for m in REGISTRY.values() if m.reads_peft)
    kind = config.get("peft_type") + (" with use_dora" if config.get("use_dora") else "")
    raise ValueError(f"no method here reads a peft {kind} adapter; readable: {readable}")


def build(model, cfg):
    """`model` made trainable for cfg's method (call after the pretrained weights are loaded)."""
    return method_of(cfg).build(model, cfg)


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
