"""The registry: method name -> Method (models/methods/__init__.py registers the built-in methods).
It imports nothing of the project but the leaves models/methods/capabilities.py and utils/errors.py, so a
method file may ask it (e.g. for every method's option names) without an import cycle."""
from models.methods.capabilities import PeftInterop
from utils.errors import BadInput


REGISTRY: dict = {}  # method name -> its models.methods.base.Method


def register(method):
    """Add a method (an instance of a Method subclass); its name and config class must be new."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    if any(m.config_cls is method.config_cls for m in REGISTRY.values()):
        raise ValueError(f"config class {method.config_cls.__name__} already belongs to another method")
    REGISTRY[method.name] = method
    return method


def get_method(name: str):
    if name not in REGISTRY:
        raise BadInput(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def method_of(cfg):
    """The method whose config class `cfg` is (exactly)."""
    for m in REGISTRY.values():
        if type(cfg) is m.config_cls:
            return m
    raise ValueError(f"{type(cfg).__name__} is the config of no registered method")


def method_for_peft_config(config: dict):
    """The method that reads a stock peft adapter with this adapter_config.json (the first
    registered one that claims it)."""
    readers = [m for m in REGISTRY.values() if isinstance(m, PeftInterop)]
    for m in readers:
        if m.reads_peft_config(config):
            return m
    readable = ", ".join(f"{m.reads_peft} ({m.name})" for m in readers if m.reads_peft)
    kind = config.get("peft_type") + (" with use_dora" if config.get("use_dora") else "")
    raise BadInput(f"no method here reads a peft {kind} adapter; readable: {readable}")


def build(model, cfg):
    """`model` made trainable for cfg's method (call after the pretrained weights are loaded)."""
    return method_of(cfg).build(model, cfg)
