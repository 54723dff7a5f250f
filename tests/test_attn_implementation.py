"""--attn_implementation: the attention kernel passed to from_pretrained, recorded in args.json, a one-line
error where the machine lacks it; eager and sdpa compute the same logits. Tiny RANDOMLY INITIALISED Llama."""
import json

import pytest
import torch

from conftest import run_main
from models.get_models import load_base_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_eager_and_sdpa_compute_the_same_logits(tiny_llama_dir):
    ids = torch.arange(3, 40).view(1, -1)
    logits = {}
    for kernel in ("eager", "sdpa"):
        model, _ = load_base_model(str(tiny_llama_dir), attn_implementation=kernel)
        assert model.config._attn_implementation == kernel
        with torch.no_grad():
            logits[kernel] = model.eval()(ids).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)


def test_the_kernel_is_recorded_and_a_missing_one_is_one_line(tiny_llama_dir, boolq_dir, tmp_path, capsys):
    common = ["--model_name", tiny_llama_dir, "--data_dir", boolq_dir, "--dataset", "boolq", "--r_ab", "4",
              "--max_steps", "1", "--batch", "4", "--val_size", "0", "--output_folder", tmp_path]
    rc, err = run_main([*common, "--attn_implementation", "eager", "--run_name", "eager"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "eager" / "args.json").read_text())["attn_implementation"] == "eager"
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    rc, err = run_main([*common, "--attn_implementation", "flash_attention_2", "--run_name", "fa2"], capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith("error: --attn_implementation flash_attention_2: not available on this machine")
    assert not (tmp_path / "fa2").exists()
    rc, err = run_main([*common, "--attn_implementation", "fast"], capsys)
    assert rc == 2 and "argument --attn_implementation: must be one of eager, sdpa, flash_attention_2" in err
