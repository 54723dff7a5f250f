"""One source per option: a dataclass field carries its default, help text and check; the command
line is generated from the fields, and the same check runs when the dataclass is built in Python.

    @dataclass
    class LoopConfig(Options):
        lr: float = option(2e-4, "peak learning rate", check=positive)

`option(...)` stores the help, the check and an optional parser in the field's metadata;
`Options.__post_init__` runs every check (BadInput, a ValueError: "lr: must be > 0, got -1"); `add_arguments`
turns the fields into argparse flags (`--lr`) whose type function parses AND checks, so a bad
value is a one-line argparse error (exit 2). Floats are always finite: NaN, inf and values beyond
float32 are refused at parse time and in Python. Fields with `flag=False` are not on the command line.
"""
import argparse
import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from utils.errors import BadInput


# ---- checks: each returns None when fine, else what is wrong -----------------------------------
def positive(v):
    return None if v > 0 else f"must be > 0, got {v}"


def non_negative(v):
    return None if v >= 0 else f"must be >= 0, got {v}"


def negative(v):
    return None if v < 0 else f"must be < 0, got {v}"


def in_range(low, high, low_open=False, high_open=False):
    text = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(v):
        ok = (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
        return None if ok else f"must be in {text}, got {v}"
    return check


# ---- parsers (text -> value) ---------------------------------------------------------------------
FLOAT32_MAX = 3.4028234663852886e38  # the training arithmetic is float32 (or narrower)


def finite_problem(value: float, text=None) -> str | None:
    """Why `value` is no number the training arithmetic can hold (NaN, inf, or beyond float32), or None."""
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        return f"must be a finite number, got {text or value} (float32: at most {FLOAT32_MAX:.4g} in magnitude)"
    return None


def parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:  # float's own words ("could not convert string to float: 'x'")
        raise BadInput(str(e)) from None
    problem = finite_problem(value, text)
    if problem:
        raise BadInput(problem)
    return value


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"must be an integer, got {text!r}") from None


def parse_bool(text) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise BadInput(f"must be true or false, got {text!r}")


_PARSERS = {"float": parse_float, "int": parse_int, "str": str, "bool": parse_bool}


def option(default, help: str, *, check=None, parse=None, choices=None, flag=True,
           aliases: tuple = ()):
    """A dataclass field that is also a command-line flag `--<name>` (plus `aliases`)."""
    meta = {"help": help, "check": check, "parse": parse, "choices": choices, "flag": flag,
            "aliases": tuple(aliases)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _base_type(f) -> str:
    """'int' for `int`, `int | None` or 'int | None'; the first non-None member of a union."""
    t = f.type
    if typing.get_origin(t) in (list, tuple, dict):  # list[str]: 'list' (not its member type)
        return typing.get_origin(t).__name__
    if not isinstance(t, str):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = getattr(args[0] if args else t, "__name__", "str")
    return t.split("|")[0].strip()


def _parser_for(f):
    return f.metadata.get("parse") or _PARSERS.get(_base_type(f), str)


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_type(f, value) -> None:
    """ValueError unless `value` (not text) is of field `f`'s type: an int for int (not a bool), a number for
    float, a bool for bool, strings in a list for list[str]; fields of other types (custom parsers) are left
    to their checks."""
    kind = _base_type(f)
    if isinstance(value, list) and "list[str]" in str(f.type) and not all(isinstance(v, str) for v in value):
        raise BadInput(f"must be a list of names (strings), got {value!r}")
    if kind in _TYPES and (isinstance(value, bool) and kind != "bool" or not isinstance(value, _TYPES[kind])):
        raise BadInput(f"must be {'an' if kind == 'int' else 'a'} {kind}, got {type(value).__name__} {value!r}")


def check_value(f, value):
    """The parsed-and-checked value of field `f` (ValueError naming what is wrong)."""
    if value is None and _default(f) is None:
        return None
    if isinstance(value, str):  # from the command line or a JSON file; values from Python as they are
        value = _parser_for(f)(value)
    else:
        check_type(f, value)
    if isinstance(value, float) and finite_problem(value):
        raise BadInput(finite_problem(value))
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise BadInput(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    check = f.metadata.get("check")
    problem = check(value) if check is not None else None
    if problem:
        raise BadInput(problem)
    return value


@dataclass
class Options:
    """Base of every options dataclass: checks run on construction."""

    def __post_init__(self):
        for f in fields(self):
            if "help" not in f.metadata:
                continue
            try:
                setattr(self, f.name, check_value(f, getattr(self, f.name)))
            except BadInput as e:
                raise BadInput(f"{f.name}: {e}") from None

    @classmethod
    def option_fields(cls):
        return [f for f in fields(cls) if f.metadata.get("flag")]

    @classmethod
    def from_values(cls, values: dict):
        """Build from a dict, taking only this class's fields (other keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def add_arguments(group, cls, seen: dict) -> None:
    """Add `cls`'s flags to an argparse group. `seen` maps flag names to the dataclass field that
    defined them: a field shared by several classes (through inheritance) is added once, and two
    different definitions of one name are an error (one source per option)."""
    for f in cls.option_fields():
        if f.name in seen:
            if seen[f.name] is not f and seen[f.name].metadata is not f.metadata:
                raise TypeError(f"option --{f.name} is defined twice ({cls.__name__})")
            continue
        seen[f.name] = f
        names = [f"--{f.name}", *f.metadata["aliases"]]
        default = _default(f)
        help_text = f"{f.metadata['help']} (default: {default})"

        def typed(text, f=f):
            try:
                return check_value(f, text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        if _base_type(f) == "bool" and f.metadata.get("parse") is None:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                               help=help_text)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(*names, dest=f.name, type=typed, help=help_text,
                               metavar="{" + ",".join(map(str, choices)) + "}" if choices else None)


def argtype(check=None, parse=parse_int):
    """An argparse `type` for tools with hand-written parsers: parse, check, one-line error."""
    def typed(text):
        try:
            value = parse(text)
            problem = check(value) if check else None
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    return typed


def defaults_of(cls) -> dict:
    return {f.name: _default(f) for f in cls.option_fields()}


# ---- run configs as files (train_knowhira.py --config FILE) ----------------------------------------
def config_value(f, value):
    """A config file's value of field `f`, checked as the flag's own text would be (check_value: text is
    parsed by the flag's parser, anything else must be of the flag's type); a list only where the flag
    parses a comma list (e.g. --target_modules). ValueError saying what is wrong."""
    if isinstance(value, list) and f.metadata.get("parse") is not None and all(isinstance(v, str) for v in value):
        return check_value(f, ",".join(value))
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        raise BadInput(f"must be {'an' if _base_type(f) == 'int' else 'a'} {_base_type(f)}, "
                       f"got {type(value).__name__} {value!r}")
    return check_value(f, value)


def read_config(path, fields: dict, ignored=()) -> dict:
    """Flag values from a JSON (or, by suffix .yaml/.yml, YAML) object {flag name: value}; `fields` maps
    flag names to their dataclass fields, keys in `ignored` (what a run's args.json records besides its
    options) are skipped, and a null equal to the option's default is left out (as an absent flag).
    Unknown keys, wrong types and values that fail a check: ValueError '<file>: <key>: why'."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"--config {path}: no such file") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json's and yaml's own error types
        raise BadInput(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} "
                       f"({' '.join(str(e).split())[:160]})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected an object of flag names and values, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        if key in ignored:
            continue
        if key not in fields:
            raise BadInput(f"{path}: unknown key {key!r} (not a flag of train_knowhira.py)")
        if value is None and _default(fields[key]) is None:
            continue
        try:
            values[key] = config_value(fields[key], value)
        except BadInput as e:
            raise BadInput(f"{path}: {key}: {e}") from None
    return values
