"""`--torch_compile`: torch.compile applied to each decoder block of the model, in place.

What is compiled, and why there:
- **Each decoder block** (the classes in the model's `_no_split_modules`, the units FSDP2 shards:
  utils/dist.py), with `block.compile(dynamic=True)`: its forward and, through AOTAutograd, its backward,
  the adapters inside included. The Hadamard layers' autograd function (models/hadamard.py
  HadamardLinearFn) is traced by dynamo, forward and backward, with no graph break (tested); so are
  peft's LoRA layers. Every block of a model runs the same code, and dynamo keeps parameters as graph
  inputs, so one compiled graph serves all the blocks: SmolLM2's 30 blocks compile two graphs in training
  (the first block's input needs no gradient, the others' do), not 30, and two more the first time a
  batch has no padding (transformers then passes no attention mask). Compiling the blocks rather than
  the whole forward is what torchtune does (per-layer compile) for the same reasons: compile time does
  not grow with depth, the module tree and state_dict names are untouched (`nn.Module.compile`, no
  `_orig_mod.` prefix: checkpoints, adapters and exports are the eager ones), and FSDP2/DDP wrap the
  compiled blocks as their usual units (compiled before sharding, as torchtune does; 2 compiled
  processes equal 1 eager one to 1e-5, tests/test_compile.py, opt-in).
- **dynamic=True**: padded lengths change from batch to batch (length-grouped batches), so the batch and
  sequence sizes are symbolic from the first call: one graph for every length, no recompile per length
  and no bucketing (bucketing would change the padding, hence the floating-point sums).
- **Not compiled: the output layer and the loss** (training/loss.py, models/output_head.py). With OutputHead the head runs only
  at the labelled positions, a row count known only from the labels (boolean-mask indexing, a
  data-dependent shape that dynamo does not capture in one graph); what is left there is one GEMM over
  those rows and one cross-entropy, small next to the blocks. The embeddings, rotary tables and the mask
  are built once per forward and stay eager too.
- **Generation stays eager** (eval/recipe.py): each decode step meets the KV cache in a new state
  (initialised or not, new strides), a new guard for dynamo, so the recompile limit (8) is reached within
  a few prompts and the rest runs eager anyway. Scoring (loglik, cloze, validation) compiles.

Numbers: compiled losses and gradients equal eager ones to 1e-5 in fp32 (tests/test_compile.py; the
fused kernels sum in another order). With dropout in training (e.g. GPT-2's 0.1), the compiled graph
draws its masks from inductor's generator, so it computes other masks than eager from the same seed
(still a function of the seed: exact resume holds).
"""
import shutil

import torch

from utils.dist import decoder_blocks
from utils.errors import BadInput


def check_compiler(device: torch.device) -> None:
    """BadInput unless inductor can build kernels for `device`: on a CPU it needs a C++ compiler."""
    if device.type != "cpu":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        compiler = get_cpp_compiler()
    except Exception as e:  # inductor's own search failed
        compiler = f"none ({type(e).__name__})"
    if shutil.which(compiler) is None:
        raise BadInput(f"--torch_compile: torch.compile's CPU backend needs a C++ compiler (g++ or clang++; "
                       f"env CXX), found {compiler}")


def compile_blocks(model: torch.nn.Module, device: torch.device) -> int:
    """Compile every decoder block of `model` in place (dynamic shapes); returns how many."""
    check_compiler(device)
    blocks = decoder_blocks(model)
    if not blocks:
        raise BadInput(f"--torch_compile: no decoder blocks found in {type(model).__name__} "
                       f"(_no_split_modules = {sorted(getattr(model, '_no_split_modules', None) or [])})")
    # dynamo keeps at most `recompile_limit` graph variants per code object, then runs it eager. Every
    # transformers block enters through one code object (GradientCheckpointingLayer.__call__), so the limit
    # counts the variants of all of them: training's 4, validation's no-grad ones and scoring's KV-cache
    # states reach the default 8 in one run; 64 leaves room (each variant compiles once).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)
