"""Evaluate one task end to end: validate, subset, shard, run the model, score, write files.

Files written under `out_dir` (rank 0 only, each atomically: temp file + os.replace):
    eval/<task>.jsonl   one line per evaluated example, in test-file order:
                        generate: {"id", "prediction", "extracted", "gold", "correct"} (prediction:
                                  the protocol's post-processed answer text)
                        loglik:   {"id", "choices", "scores", "extracted", "gold", "correct"}; the text
                                  answer format adds "options" (the scored texts), "pred_norm",
                                  "correct_norm" (argmax of score / option length in characters)
                        cloze:    {"id", "choices", "scores", "extracted", "pred_norm", "gold", "correct",
                                  "correct_norm"} (choices: the choice texts; eval/cloze.py)
    results.json        {"meta": {...}, "tasks": {task: result}} via update_results_json

Example ids are indices into the task's test file. With max_examples=N a fixed, seeded subset is
evaluated: the first N of torch.randperm(len(records), Generator(seed)), sorted back to file
order, so the same N and seed always give the same questions whatever the batch size or world
size. Accuracy counts an unparseable generation (no answer word) as wrong. The protocol
(data/protocols.py) gives the prompt, the post-processing, the extraction and the gold answer.
"""
import json
import time
from pathlib import Path

import torch

from data.answer_format import options
from data.protocols import Protocol
from data.tasks import ANSWER_WORDS, resolve_task
from data.choices import record_choices
from data.questions import parse_record
from eval.cloze import PROTOCOL_NAME as CLOZE_PROTOCOL, argmax, cloze_rows, count_truncated
from eval.generate import generate_answers
from eval.loglik import score_candidates
from eval.metrics import chance_accuracy, majority_accuracy, wilson_interval
from utils.atomic import atomic_write_bytes, locked_folder
from utils.errors import BadInput
from utils.runs import read_json

MODES = ("generate", "loglik", "cloze")


def load_test_records(data_dir, task: str) -> list[dict]:
    """The task's test records, via data.commonsense.load_task_split (raises its DataError)."""
    from data.commonsense import load_task_split  # lazy: keeps eval importable on its own

    return load_task_split(data_dir, resolve_task(task), "test")


def validate_records(records: list[dict], task: str) -> None:
    """ValueError naming the task and record index unless every record has an instruction and a
    gold answer among the answer words its question offers (a bad gold would score silently 0)."""
    vocab = ANSWER_WORDS[task]
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
            raise BadInput(f"{task}: record {index} has no 'instruction' string")
        answer = record.get("answer")
        if answer not in vocab:
            raise BadInput(f"{task}: record {index} has answer {answer!r}, "
                           f"not one of {'/'.join(vocab)}")
        if answer not in record_choices(record, task):
            raise BadInput(f"{task}: record {index} has answer {answer!r}, but its question "
                           f"offers only {'/'.join(record_choices(record, task))}")


def check_records(records: list[dict], task: str, mode: str, answer_format: str) -> list[str]:
    """ValueError naming the task and record unless every record can be evaluated in `mode` and
    `answer_format` (gold among its options; cloze: question and choices parse; text: every option
    parses); returns the strings offered as answers (the answer words, or the text options)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not records:
        raise BadInput(f"{task}: no records to evaluate")
    validate_records(records, task)
    if answer_format == "text" and mode != "loglik":
        raise BadInput(f"the text answer format is scored, not generated: use --eval_mode loglik, not {mode}")
    if mode == "cloze":  # every rank checks every record before any runs the model
        for index, record in enumerate(records):
            parse_record(record, task, index)
    if answer_format == "text":  # every option of every record parses, or a one-line error names it
        return [t for index, record in enumerate(records) for t in options(record, index, "text", task)[1]]
    return ANSWER_WORDS[task]


def select_ids(n_total: int, max_examples: int | None, seed: int) -> list[int]:
    """Indices to evaluate: all, or a fixed seeded subset of max_examples in file order."""
    if max_examples is None or max_examples >= n_total:
        return list(range(n_total))
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(n_total, generator=generator)
    return sorted(permutation[:max_examples].tolist())


def _gather_rows(rows: list[dict], world_size: int) -> list[dict]:
    """All ranks' rows, in id order (all_gather_object when torch.distributed is running)."""
    if world_size > 1:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError(f"world_size={world_size} but torch.distributed is not initialised")
        shards = [None] * world_size
        torch.distributed.all_gather_object(shards, rows)
        rows = [row for shard in shards for row in shard]
    return sorted(rows, key=lambda row: row["id"])


def prompt_room(model, tokenizer, mode: str, max_new_tokens: int, words=()) -> int | None:
    """Prompt tokens that fit the model's positions (config max_position_embeddings) together with
    what follows them: max_new_tokens generated tokens, or (loglik) the longest scored response for
    the options `words`; None when the model states no limit."""
    from data.answer_format import candidate_response

    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not max_pos:
        return None
    after = max_new_tokens if mode == "generate" else max(
        (len(tokenizer(candidate_response(w), add_special_tokens=False)["input_ids"]) for w in words), default=0)
    if max_pos - after < 2:
        raise BadInput(f"{'--max_new_tokens ' + str(after) if mode == 'generate' else 'the answer'} leaves "
                       f"no room for a prompt in the model's {max_pos} positions")
    return max_pos - after


def fit_prompt(ids: list[int], room: int | None, bos_id: int | None) -> list[int]:
    """The prompt cut from the LEFT to `room` tokens, as training cuts it (the question's end and
    "### Response:" stay), keeping a leading BOS token."""
    if room is None or len(ids) <= room:
        return ids
    head = ids[:1] if bos_id is not None and ids[:1] == [bos_id] else []
    return head + ids[len(ids) - (room - len(head)):]


def _run_model(model, tokenizer, records, ids, task, mode, batch_size, max_new_tokens,
               beam_size, show_progress, protocol: Protocol, room: int | None, answer_format: str) -> list[dict]:
    """Per-example rows for records[ids] (this rank's share); protocol prompts cut to `room` tokens."""
    if not ids:
        return []
    if mode == "cloze":  # the choice texts as continuations; the protocol's prompt is not used
        return cloze_rows(model, tokenizer, records, ids, task, batch_size=batch_size,
                          show_progress=show_progress)
    chosen = [records[i] for i in ids]
    prompts = [fit_prompt(protocol.eval_prompt_ids(tokenizer, r), room, tokenizer.bos_token_id) for r in chosen]
    rows = []
    if mode == "generate":
        texts = generate_answers(model, tokenizer, prompts, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, beam_size=beam_size,
                                 show_progress=show_progress,
                                 decode=lambda p, new: protocol.answer_text(tokenizer, p, new))
        for i, record, text in zip(ids, chosen, texts):
            extracted, gold = protocol.extract(text, task), protocol.gold(record, task)
            rows.append({"id": i, "prediction": text, "extracted": extracted,
                         "gold": gold, "correct": extracted is not None and extracted == gold})
    else:  # each offered option's response scored; the best one is the prediction
        offered = [options(r, i, answer_format, task) for i, r in zip(ids, chosen)]
        scores = score_candidates(model, tokenizer, prompts, [texts for _, texts in offered],
                                  batch_size=batch_size, show_progress=show_progress)
        for i, record, (words, texts), s in zip(ids, chosen, offered, scores):
            word = words[argmax(s)]
            row = {"id": i, "choices": words, "scores": s, "extracted": word,
                   "gold": record["answer"], "correct": word == record["answer"]}
            if answer_format == "text":
                norm = words[argmax([v / len(t) for v, t in zip(s, texts)])]
                row.update(options=texts, pred_norm=norm, correct_norm=norm == record["answer"])
            rows.append(row)
    return rows


def _norm_fields(rows: list[dict]) -> dict:
    """acc_norm's count, accuracy and 95% Wilson interval (cloze and text-format rows)."""
    correct = sum(row["correct_norm"] for row in rows)
    low, high = wilson_interval(correct, len(rows))
    return {"correct_norm": correct, "accuracy_norm": correct / len(rows),
            "ci95_low_norm": low, "ci95_high_norm": high}


def evaluate_task(model, tokenizer, records: list[dict], task: str, out_dir, *, protocol: Protocol,
                  mode: str, batch_size: int, max_new_tokens: int, beam_size: int,
                  max_examples: int | None, seed: int, rank: int = 0, world_size: int = 1,
                  answer_format: str, show_progress: bool = True) -> dict:
    """Evaluate `model` on `records` of `task`; write eval/<task>.jsonl (rank 0); return the result.
    The options are EvalOptions' (eval/recipe.py) and the protocol's (data/protocols.py).

    mode "generate": generate a response, extract the answer as the protocol does.
    mode "loglik":   pick the offered answer word whose response scores highest (eval.loglik); with
                     answer_format "text" the responses name the options' texts (data/answer_format.py)
                     and the result adds acc_norm (score / option length in characters).
    mode "cloze":    pick the choice whose TEXT scores highest as a continuation, lm-eval style
                     (eval.cloze); the result adds acc_norm (length-normalised) as accuracy_norm.
    With world_size > 1, rank r evaluates the selected examples r::world_size and the rows are
    gathered on every rank (torch.distributed must be initialised); every rank returns the same
    result, only rank 0 writes.
    """
    task = resolve_task(task)
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    offered = check_records(records, task, mode, answer_format)

    ids = select_ids(len(records), max_examples, seed)
    room, truncated = None, None  # prompts longer than the model's positions allow are cut (counted)
    if mode == "cloze":  # contexts cut from the left as lm-eval cuts them (eval/cloze.py)
        truncated = count_truncated(model, tokenizer, records, ids, task)
    else:
        room = prompt_room(model, tokenizer, mode, max_new_tokens, offered)
        truncated = 0 if room is None else \
            sum(len(protocol.eval_prompt_ids(tokenizer, records[i])) > room for i in ids)
    start = time.perf_counter()
    rows = _run_model(model, tokenizer, records, ids[rank::world_size], task, mode, batch_size,
                      max_new_tokens, beam_size, show_progress and rank == 0, protocol, room, answer_format)
    rows = _gather_rows(rows, world_size)
    seconds = time.perf_counter() - start

    n = len(rows)
    correct = sum(row["correct"] for row in rows)
    parse_failures = sum(row["extracted"] is None for row in rows)
    low, high = wilson_interval(correct, n)
    evaluated = [records[i] for i in ids]
    result = {
        "task": task,
        "mode": mode,
        "protocol": CLOZE_PROTOCOL if mode == "cloze" else protocol.name,
        "n": n,
        "n_total": len(records),
        "correct": correct,
        "accuracy": correct / n,
        "ci95_low": low,
        "ci95_high": high,
        "answer_format": answer_format if mode != "cloze" else None,
        **(_norm_fields(rows) if mode == "cloze" or answer_format == "text" else {}),
        "parse_failures": parse_failures,
        "parse_failure_rate": parse_failures / n,
        "chance_accuracy": chance_accuracy(task, evaluated),
        "majority_accuracy": majority_accuracy(evaluated),
        "examples_per_s": n / seconds if seconds > 0 else None,
        "seconds": seconds,
        "max_examples": max_examples,
        "seed": seed,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens if mode == "generate" else None,
        "beam_size": beam_size if mode == "generate" else None,
        "truncated_prompts": truncated,
        "predictions_file": f"eval/{task}.jsonl",
    }
    if rank == 0:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_bytes(Path(out_dir) / "eval" / f"{task}.jsonl", lines.encode("utf-8"))
    return result


def read_results(path) -> dict:
    """results.json as {"meta": {...}, "tasks": {...}} (empty when absent); ValueError naming the file
    when it is not valid JSON or not of that shape (it is never overwritten then). EvalRecipe.setup
    calls this before anything is evaluated or written."""
    path = Path(path)
    if not path.exists():
        return {"meta": {}, "tasks": {}}
    try:
        results = read_json(path)
    except BadInput as err:
        raise BadInput(f"{err}; refusing to overwrite it") from None
    if not isinstance(results, dict):
        raise BadInput(f"{path} holds a JSON {type(results).__name__}, not evaluation results "
                       '({"meta": {...}, "tasks": {...}}); refusing to overwrite it')
    results.setdefault("meta", {})
    results.setdefault("tasks", {})
    wrong = [k for k in ("meta", "tasks") if not isinstance(results[k], dict)]
    if wrong:
        raise BadInput(f"{path}: {wrong[0]!r} is a JSON {type(results[wrong[0]]).__name__}, not an object "
                       '(expected {"meta": {...}, "tasks": {...}}); refusing to overwrite it')
    return results


def update_results_json(out_dir, task_result: dict, meta: dict, configuration: tuple = ()) -> dict:
    """Merge `meta` and this task's result into <out_dir>/results.json (atomically); return it.

    Layout: {"meta": {...}, "tasks": {task: result}}. Existing tasks are kept; a task evaluated
    again replaces its old entry; meta keys are updated. The read-modify-write holds a lock on out_dir,
    so two evaluations into one folder both keep their tasks; a meta key in `configuration` that the file
    (written meanwhile by another process) holds with another value is refused (BadInput), not overwritten.
    """
    path = Path(out_dir) / "results.json"
    with locked_folder(out_dir):
        results = read_results(path)
        changed = [k for k in configuration
                   if results["tasks"] and k in results["meta"] and results["meta"][k] != meta.get(k)]
        if changed:
            k = changed[0]
            raise BadInput(f"{path} now holds evaluations of another configuration ({k} {results['meta'][k]!r}, "
                           f"this one {meta.get(k)!r}; written by another process meanwhile); {task_result['task']} "
                           "was not added: evaluate into another --results_dir")
        results["meta"].update(meta)
        results["tasks"][task_result["task"]] = task_result
        atomic_write_bytes(path, (json.dumps(results, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return results
