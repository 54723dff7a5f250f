"""Evaluation on the eight commonsense benchmarks.

Modules, each holding one thing:
    choices   which answer words a question offers (parsed from "Answer format: a/b/c")
    extract   the answer word found in generated text
    metrics   Wilson confidence interval, chance and majority baselines
    generate  batched, left-padded greedy/beam generation of answers
    loglik    log-likelihood scoring of the candidate responses
    evaluate  evaluate one task end to end, write per-example jsonl and results.json
    runtime   small model helpers (device, eval mode)
"""
