"""Side-by-side performance benchmark of the fused Hadamard adapters against their baselines.

One run on one machine measures, interleaved where possible so that a busy machine slows every
configuration alike, and prints medians and ratios (also written to --out as JSON):

  a  layer.py       one layer forward+backward: fused KnowHiRA / fused HiRA (models.hadamard),
                    peft HiRA, peft LoRA, full fine-tuning (weight grad) and a frozen layer (input grad
                    only); plus a decode-shaped (1 token, inference_mode) forward of the fused layer
  b  step.py        one optimizer step of the real SmolLM2-135M (and, with --gptneo_shaped, a random
                    GPT-Neo-1.3B-shaped model with fewer layers) per method: THE TRAINING RECIPE'S
                    step (training.recipe.TrainRecipe -> Trainer.train_step) on real records from
                    --data_dir; peft's HiRA (not a registered method) as an HF mean-loss step;
                    --torch_compile adds each method compiled (compile time, steady-state ratio)
  c  memory.py      peak memory of each (b) configuration, each in a fresh spawned subprocess
  d  svd.py         start-up cost of KnowHiRA's singular values (models.spectrum.sigma_norms)
  e  evaluation.py  evaluation throughput (examples/s) at batch 1 and 16, generation and
                    log-likelihood scoring, on real BoolQ test prompts from --data_dir
  f  peers.py       the recipe's step against HF Trainer + peft (LLM-Adapters' finetune.py style) on the
                    same batch sequence, interleaved step by step: median ratio, bootstrap 95% interval
  g  peer_eval.py   evaluation against LLM-Adapters' evaluator; loglik scoring before / after single-pass
  h  peer_eval.py   cloze scoring (eval/cloze.py) against lm-eval's HFLM on the same ARC-Easy questions

The tokenised-feature cache at Commonsense-170K size (Arrow vs the .npz cache it replaced, cold and warm,
1 and 2 torchrun ranks, seconds and peak RSS) is its own command: `python -m scripts.bench.data` (data.py).

common.py holds the timing helpers, targets.py the PASS/MISS target table, run.py the flags and the
dispatch. Usage, from the repository root (small sizes for a busy CPU; the defaults are the issue's):

  .venv/bin/python -m scripts.bench --sections a,d --layer_dim 256 --tokens 256 --repeats 3
  .venv/bin/python -m scripts.bench                       # everything, default sizes
  .venv/bin/python -m scripts.bench --sections b,c --gptneo_shaped --dtype bf16

This is a measurement tool, not a test: it prints PASS/MISS against the issue's targets but never
fails on them. Timings from a machine shared with other work are indicative only.
"""
