"""Load a causal LM (hub name, local folder, or GGUF file) and add KnowHiRA adapters to it."""
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import BadInput
from utils.options import Options, option

DEFAULT_MODEL = "weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # scripts/fetch_smollm2.sh
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


@dataclass
class ModelOptions(Options):
    model_name: str = option(DEFAULT_MODEL, "hub name, local folder, or path to a .gguf file")
    gguf_file: str | None = option(None, "GGUF file name inside --model_name's folder")
    load_bit: int = option(32, "32: fp32 base; 16: bf16 base where supported, else fp16", choices=(32, 16))
    enable_grad_ckpt: bool = option(False, "gradient checkpointing")
    attn_implementation: str | None = option(None, "the attention kernel transformers uses (from_pretrained's "
                                             "attn_implementation); default: the one it picks",
                                             choices=ATTN_IMPLEMENTATIONS)

def load_dtype(load_bit: int, device: str | None = None) -> torch.dtype:
    """32 -> fp32; 16 -> bf16 where the device supports it, else fp16."""
    if load_bit == 32:
        return torch.float32
    if load_bit == 16:
        if device == "cuda" or (device is None and torch.cuda.is_available()):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16  # CPUs run bf16 matmuls
    raise ValueError(f"load_bit must be 32 or 16, got {load_bit}")


def split_gguf(model_name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Accept `--model_name dir --gguf_file x.gguf` or `--model_name dir/x.gguf`."""
    if gguf_file is None and model_name.endswith(".gguf"):
        path = Path(model_name)
        return str(path.parent), path.name
    return model_name, gguf_file


def looks_local(name: str) -> bool:
    """A path rather than a hub id (org/model): absolute, relative with ./ or ../, ~, or deeper."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or Path(name).exists()


def check_safetensors(path) -> None:
    """BadInput naming `path` unless it is a whole safetensors file: an 8-byte header length, that many
    bytes of JSON header, and data reaching the end of every tensor (only the header is read)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or 8 + n > size:
            raise BadInput(f"{path}: not a complete safetensors file ({size} bytes, shorter than its header; "
                           "truncated or damaged)")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise BadInput(f"{path}: not a safetensors file (its header is not a JSON table of tensors; "
                           "damaged?)") from None
    if 8 + n + end > size:
        raise BadInput(f"{path}: not a complete safetensors file ({size} bytes; its tensors need {8 + n + end}; "
                       "truncated or damaged)")


def check_model_type(config_file: Path) -> None:
    """BadInput naming `config_file` when its model_type is not one this transformers knows (before
    transformers logs about it): code of the folder's own that it names (auto_map) is never run here
    (trust_remote_code=False). A known model_type loads with transformers' own class whatever auto_map
    says; a config.json that is not JSON is left to transformers' own message."""
    from transformers import CONFIG_MAPPING, __version__

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or model_type in CONFIG_MAPPING:
        return
    if config.get("auto_map"):
        raise BadInput(f"{config_file}: model_type {model_type!r} needs the folder's own Python code (auto_map), "
                       "and a model folder's code is never run here (trust_remote_code=False)")
    raise BadInput(f"{config_file}: model_type {model_type!r} is not an architecture transformers {__version__} "
                   "knows (a newer transformers may)")


def check_gguf(path) -> None:
    """BadInput naming `path` unless gguf's reader parses it whole: header, metadata, tensor table, and
    data reaching the end of every tensor (a cut file fails here, wherever it was cut, before
    transformers reads it into a vague error naming only the folder). The data is memory-mapped, not read."""
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, struct.error, OverflowError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise BadInput(f"{path}: not a complete GGUF file ({size} bytes; truncated or damaged: {reason})") from None
    if end > size:
        raise BadInput(f"{path}: not a complete GGUF file ({size} bytes; its tensors need {end}; truncated or damaged)")


def load_base_model(model_name: str, **options):
    """(model, tokenizer) from a hub name (online users), a local folder, or a GGUF file; `options`
    are the other ModelOptions fields (gguf_file, load_bit, enable_grad_ckpt), defaults as there.

    GGUF weights are dequantised by transformers to the requested dtype. The tokenizer gets
    pad = eos when it has no pad token (GPT-2, GPT-Neo, Llama).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    opts = ModelOptions(model_name=model_name, **options)
    model_name, gguf_file = split_gguf(opts.model_name, opts.gguf_file)
    if gguf_file is not None and not (Path(model_name) / gguf_file).is_file():
        raise BadInput(f"GGUF file {Path(model_name) / gguf_file} does not exist "
                       f"(scripts/fetch_smollm2.sh fetches SmolLM2-135M-Instruct)")
    if looks_local(model_name) and not Path(model_name).exists():
        raise BadInput(f"model {model_name} does not exist (expected a hub name like org/model, "
                       "a local model folder, or a .gguf file)")
    if gguf_file is None and Path(model_name).is_dir() and not (Path(model_name) / "config.json").is_file():
        raise BadInput(f"model folder {model_name} has no config.json (expected a Hugging Face model "
                       "folder: config.json, weights and tokenizer files; or a .gguf file)")
    if gguf_file is not None:
        check_gguf(Path(model_name) / gguf_file)
    if gguf_file is None and Path(model_name).is_dir():
        check_model_type(Path(model_name) / "config.json")
        for weights in sorted(Path(model_name).glob("*.safetensors")):
            check_safetensors(weights)
    # a model folder's own Python code is never run (transformers would otherwise ask "[y/N]" mid-run)
    kwargs = {"trust_remote_code": False, **({"gguf_file": gguf_file} if gguf_file else {})}
    kernel = {"attn_implementation": opts.attn_implementation} if opts.attn_implementation else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=load_dtype(opts.load_bit), **kwargs, **kernel)
    except ImportError as e:  # e.g. flash_attention_2 without its package
        raise BadInput(f"--attn_implementation {opts.attn_implementation}: not available on this machine "
                       f"({' '.join(str(e).split())[:200]})") from None
    except ValueError as e:
        if kernel and "attn_implementation" in str(e):  # the architecture has no such kernel
            raise BadInput(f"--attn_implementation {opts.attn_implementation}: {model_name} does not support it "
                           f"({' '.join(str(e).split())[:200]})") from None
        first = " ".join(str(e).split())[:300] if str(e).strip() else type(e).__name__
        raise BadInput(f"model {model_name} could not be loaded (a hub name like org/model, a local "
                       f"model folder, or a .gguf file): {first}") from None
    except OSError as e:  # not on the hub / offline / a folder without model or tokenizer files
        first = " ".join(str(e).split())[:300] if str(e).strip() else type(e).__name__
        raise BadInput(f"model {model_name} could not be loaded (a hub name like org/model, a local "
                       f"model folder, or a .gguf file): {first}") from None
    except Exception as e:  # safetensors' own error type (check_safetensors finds most first)
        if type(e).__name__ != "SafetensorError":
            raise
        raise BadInput(f"model {model_name}: a weights file cannot be read (truncated or damaged: "
                       f"{' '.join(str(e).split())[:200]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if opts.enable_grad_ckpt:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, tokenizer


def get_knowhira_models(model_name: str, peft_type: str = "knowhira", **options):
    """The documented Python API: load the PRETRAINED model, then build the method on it (so σ_norm
    sees the real weights). `options` are ModelOptions fields (gguf_file, load_bit,
    enable_grad_ckpt) and the method's config fields (r_ab, target_modules, knowledge_alpha,
    ortho_lambda, svd_rank_ratio, spectrum_init_scale, adaptive_gating, init_ab, g_init, ...), with
    the same defaults as the command line. Returns (model, tokenizer, config), the config being the
    method's dataclass (KnowHiRAConfig for the default peft_type)."""
    from dataclasses import fields

    from models.methods import build, get_method

    config_cls = get_method(peft_type).config_cls
    known = {f.name for f in fields(ModelOptions)} | {f.name for f in fields(config_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BadInput(f"{peft_type} has no option {unknown[0]!r}")
    model_fields = {f.name for f in fields(ModelOptions)}
    model, tokenizer = load_base_model(model_name, **{k: v for k, v in options.items() if k in model_fields})
    cfg = config_cls.from_values(options)
    return build(model, cfg), tokenizer, cfg
