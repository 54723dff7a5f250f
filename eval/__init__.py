"""Evaluation on the eight commonsense benchmarks.

Modules, each holding one thing:
    metrics   Wilson confidence interval, chance and majority baselines
    generate  batched, left-padded greedy/beam generation of answers
    loglik    log-likelihood scoring of the candidate responses
    evaluate  evaluate one task end to end, write per-example jsonl and results.json
    recipe    the evaluation entry (options, model from a run or zero-shot, every task)
    runtime   small model helpers (device, eval mode)
"""
