"""The training loop in-process (training/loop.py) on a tiny RANDOM GPT-Neo with the real GPT-2
tokenizer and real LLM-Adapters records: the loss falls, L_ortho's gradient reaches A and B with
weight exactly λ, the loss covers exactly the response tokens, non-finite losses stop the run
keeping the last good checkpoint, and eval/log/checkpoint/early-stop settings do what they say."""
import copy
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file

import training.loop as loop
from conftest import tiny_model
from data.commonsense import load_train_data
from data.prompt import encode_prompt, encode_response, generate_prompt
from data.tokenize import IGNORE_INDEX, Collator, tokenize_record
from models.adapter import adapter_layers
from models.methods import Regularizer, build, get_method, method_of
from models.methods.hira import ortho_loss
from models.methods.knowhira import KnowHiRAConfig
from training.checkpoint import latest_checkpoint
from training.logger import read_log
from training.loop import LoopConfig, NonFiniteLoss, Trainer, param_groups
from training.loss import task_loss_sum
from training.order import epoch_order

TARGETS = ["q_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
CUTOFF = 128


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def records(data_dir):
    """Real training records of four tasks, shuffled once (seed 0); the first 200."""
    recs = load_train_data(data_dir, "mix:boolq,ARC-Easy,ARC-Challenge,openbookqa")
    random.Random(0).shuffle(recs)
    return recs[:200]


@pytest.fixture(scope="module")
def features(records, gpt2_tokenizer):
    return [tokenize_record(gpt2_tokenizer, r, CUTOFF, False) for r in records]


def adapted_neo(r=4, lam=1e-3, embed_scale=1.0, seed=0):
    model = tiny_model("gpt_neo", seed=seed)
    if embed_scale != 1.0:
        with torch.no_grad():
            model.transformer.wte.weight.mul_(embed_scale)
    cfg = KnowHiRAConfig(r_ab=r, target_modules=TARGETS, ortho_lambda=lam)
    model = build(model, cfg)
    return model, cfg


def run_loop(run_dir, model, cfg, tokenizer, train_f, val_f=(), accelerator=None, **kw):
    """Trainer(...).run() as TrainRecipe.trainer() builds it: the method's save and its
    Regularizer(fn, weight)."""
    method = method_of(cfg)
    settings = {"batch": 2, "lr": 1e-2, "save_steps": 1000, "eval_strategy": "no", **kw}
    return Trainer(accelerator or Accelerator(cpu=True), model, tokenizer, list(train_f), list(val_f),
                   LoopConfig(**settings), run_dir,
                   lambda m, d, write: method.save(m, cfg, d, write), method.regularizer(cfg)).run()


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ---- 2. the loss falls -----------------------------------------------------------------------
def test_training_loss_falls(tmp_path, features, gpt2_tokenizer):
    # GPT-Neo ties the output head to the input embedding; at the default init (std 0.02) the
    # logits of a 48-wide model stay within ~1 nat of uniform whatever the adapters do, so the
    # embedding is scaled x10 (std 0.2) to let the model express the answer tokens it learns.
    model, cfg = adapted_neo(r=8, lam=1e-3, embed_scale=10.0)
    result = run_loop(tmp_path, model, cfg, gpt2_tokenizer, features[:80], batch=4, lr=0.1,
                      max_steps=20)
    assert result.steps == 20
    losses = [r["loss_task"] for r in read_log(tmp_path)]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert losses[0] > 10.0  # a random model knows nothing: about ln(50257) = 10.8 or worse
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last, losses)  # observed: 11.9 -> 6.8


# ---- 3. L_ortho (the loop's regulariser for KnowHiRA): logged, its gradient reaches A and B with weight λ ----------------------
def test_ortho_loss_gradient_reaches_A_and_B(tmp_path, features, gpt2_tokenizer):
    base, _ = adapted_neo(r=4, lam=0.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init makes ∂||BᵀB - I||²/∂B = 4B(BᵀB - I) vanish: use a random B
        for layer in adapter_layers(base).values():
            layer.hira_B.copy_(0.3 * torch.randn(layer.hira_B.shape, generator=g))
    lam = 0.25
    knowhira = get_method("knowhira")
    reg_lam = knowhira.regularizer(KnowHiRAConfig(r_ab=4, target_modules=TARGETS, ortho_lambda=lam))
    assert isinstance(reg_lam, Regularizer) and reg_lam == (ortho_loss, lam)
    assert reg_lam.fn is ortho_loss and reg_lam.weight == lam
    assert knowhira.regularizer(KnowHiRAConfig(r_ab=4, target_modules=TARGETS, ortho_lambda=0.0)) is None
    grads, logs = {}, {}
    for run_lam in (0.0, lam):
        model = copy.deepcopy(base)
        cfg = KnowHiRAConfig(r_ab=4, target_modules=TARGETS, ortho_lambda=run_lam)
        acc = Accelerator(cpu=True)
        seen = {}

        def capture(params, max_norm, _model=model, _seen=seen):  # called right after backward
            _seen.update({n: p.grad.detach().clone() for n, p in trainable(_model).items()
                          if p.grad is not None})
            return torch.tensor(0.0)

        acc.clip_grad_norm_ = capture
        # grad_acc = 2: the regulariser is spread over the micro-steps and must add up to λ once
        run_loop(tmp_path / f"lam{run_lam}", model, cfg, gpt2_tokenizer, features[:4],
                 accelerator=acc, batch=2, grad_acc=2, max_steps=1, max_grad_norm=0.0)
        grads[run_lam], logs[run_lam] = seen, read_log(tmp_path / f"lam{run_lam}")

    ref = copy.deepcopy(base)
    params = trainable(ref)
    reg = ortho_loss(ref)
    d_reg = dict(zip(params, torch.autograd.grad(reg, list(params.values()), allow_unused=True)))
    checked = {"hira_A": 0, "hira_B": 0}
    for name in params:
        kind = name.rsplit(".", 1)[-1]
        diff = grads[lam][name] - grads[0.0][name]
        if kind in checked:
            expected = lam * d_reg[name]
            assert expected.abs().max() > 1e-3  # the regulariser really pulls on A and B
            scale = grads[0.0][name].abs().max().item() + expected.abs().max().item()
            torch.testing.assert_close(diff, expected, rtol=1e-4, atol=1e-6 * scale)
            checked[kind] += 1
        else:  # the gate does not enter L_ortho
            assert d_reg[name] is None
            assert diff.abs().max().item() <= 1e-6 * (grads[0.0][name].abs().max().item() + 1e-12)
    assert checked == {"hira_A": 10, "hira_B": 10}  # 5 targets x 2 blocks

    rec0, rec = logs[0.0][0], logs[lam][0]
    assert rec["loss_reg"] == pytest.approx(reg.item(), rel=1e-6) and rec["loss_reg"] > 0
    assert rec["loss_total"] == pytest.approx(rec["loss_task"] + lam * rec["loss_reg"], rel=1e-12)
    assert rec["loss_task"] == pytest.approx(rec0["loss_task"], rel=1e-7)  # same params, same batch
    assert rec0["loss_reg"] == 0.0 and rec0["loss_total"] == rec0["loss_task"]


# ---- 4. the loss covers exactly the response tokens of the batch the loop sees ---------------
def test_loop_batch_labels_cover_exactly_the_response(tmp_path, records, gpt2_tokenizer, monkeypatch):
    tok = gpt2_tokenizer
    recs = []
    for r in records:  # untruncated examples from at least two tasks, so the full prompt is known
        n = len(encode_prompt(tok, generate_prompt(r["instruction"], r["input"])))
        if n + len(encode_response(tok, r["output"])) <= CUTOFF:
            recs.append(r)
        if len(recs) == 6:
            break
    assert len({r["task"] for r in recs}) >= 2
    feats = [tokenize_record(tok, r, CUTOFF, False) for r in recs]

    seen = []
    real = loop.task_loss_sum

    def spy(model, batch, head=None):
        loss, n = real(model, batch, head)
        with torch.no_grad():  # hand computation on the same batch and weights
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        seen.append(({k: v.clone() for k, v in batch.items()}, loss.item(), n, logits.double()))
        return loss, n

    monkeypatch.setattr(loop, "task_loss_sum", spy)
    model, cfg = adapted_neo()
    run_loop(tmp_path, model, cfg, tok, feats, batch=3, max_steps=1, seed=7)
    assert len(seen) == 1
    batch, loss, n, logits = seen[0]

    lengths = [len(f["input_ids"]) for f in feats]  # step 1 of epoch 0, seed 7, grouped by length
    chosen = [recs[i] for i in epoch_order(len(feats), 7, 0, lengths, 3)[:3]]
    width = batch["input_ids"].shape[1]
    hand_sum, hand_n = 0.0, 0
    for i, r in enumerate(chosen):
        prompt = encode_prompt(tok, generate_prompt(r["instruction"], r["input"]))
        resp = encode_response(tok, r["output"])  # "the correct answer is X" + EOS
        assert r["output"].startswith("the correct answer is") and resp[-1] == tok.eos_token_id
        p, total = len(prompt), len(prompt) + len(resp)
        assert batch["input_ids"][i, :total].tolist() == prompt + resp
        assert batch["input_ids"][i, total:].eq(tok.eos_token_id).all()  # pad = eos
        assert batch["attention_mask"][i].tolist() == [1] * total + [0] * (width - total)
        assert batch["labels"][i].tolist() == [IGNORE_INDEX] * p + resp + [IGNORE_INDEX] * (width - total)
        for pos in range(p, total):  # the logit at pos-1 predicts the token at pos
            hand_sum += F.cross_entropy(logits[i, pos - 1], batch["input_ids"][i, pos]).item()
        hand_n += len(resp)
    assert n == hand_n
    assert loss == pytest.approx(hand_sum, rel=1e-5)
    assert read_log(tmp_path)[0]["loss_task"] == pytest.approx(hand_sum / hand_n, rel=1e-5)

    # --train_on_inputs: every real token but the first is a target
    feats_all = [tokenize_record(tok, r, CUTOFF, train_on_inputs=True) for r in recs[:3]]
    _, n_all = real(model, Collator(tok)(feats_all))
    assert n_all == sum(len(f["input_ids"]) - 1 for f in feats_all)


# ---- 7. a non-finite loss stops the run; the last good checkpoint stays ----------------------
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, features, gpt2_tokenizer,
                                                             monkeypatch):
    real, calls = loop.task_loss_sum, []

    def poisoned(model, batch, head=None):  # the 4th optimizer step's loss is NaN
        loss, n = real(model, batch, head)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 4 else loss), n

    monkeypatch.setattr(loop, "task_loss_sum", poisoned)
    model, cfg = adapted_neo()
    with pytest.raises(NonFiniteLoss, match=r"non-finite task loss nan at step 4"):
        run_loop(tmp_path, model, cfg, gpt2_tokenizer, features[:20], max_steps=8, save_steps=2)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_000002"  # step 3 was fine but never saved
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.pt", "trainable.safetensors"]
    assert torch.load(ckpt / "state.pt", weights_only=True)["step"] == 2
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert saved.keys() == trainable(model).keys()
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]
    assert not (tmp_path / "final").exists()

    monkeypatch.setattr(loop, "task_loss_sum", real)  # the run resumes from the good checkpoint
    model2, cfg2 = adapted_neo()
    result = run_loop(tmp_path, model2, cfg2, gpt2_tokenizer, features[:20], max_steps=8, save_steps=2)
    assert result.steps == 8
    assert [r["step"] for r in read_log(tmp_path)] == list(range(1, 9))


# ---- 9. eval / log / checkpoint / early-stop settings ----------------------------------------
def test_eval_steps_log_steps_keep_checkpoints(tmp_path, features, gpt2_tokenizer):
    model, cfg = adapted_neo()
    val = features[20:24]
    run_loop(tmp_path, model, cfg, gpt2_tokenizer, features[:10], val, max_steps=7,
             eval_strategy="steps", eval_steps=3, log_steps=2, save_steps=2, keep_checkpoints=3)
    log = read_log(tmp_path)
    shape = [(r["step"], "loss_task" in r, "val_loss" in r) for r in log]
    # train records every 2nd step and at the last; val records every 3rd step and at the last
    assert shape == [(2, True, False), (3, False, True), (4, True, False), (6, True, True),
                     (7, True, True)]
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000004", "step_000006", "step_000007"]  # saved 2,4,6,7; keep 3
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000007"

    # the logged validation loss is the token-averaged task loss of the final weights
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for f in val:
            s, c = task_loss_sum(model, Collator(gpt2_tokenizer)([f]))
            total, count = total + s.item(), count + c
    assert log[-1]["val_loss"] == pytest.approx(total / count, rel=1e-5)
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert (tmp_path / "best" / "knowhira_adapter.safetensors").is_file()
    if vals.index(min(vals)) == len(vals) - 1:  # best is the last evaluation: best/ == final/
        a, b = (load_file(str(tmp_path / d / "knowhira_adapter.safetensors")) for d in ("best", "final"))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy,eval_steps,expected", [("epoch", 50, [3, 6]), ("steps", 4, [4, 6]),
                                                         ("no", 1, [])])
def test_eval_strategy(tmp_path, features, gpt2_tokenizer, strategy, eval_steps, expected):
    model, cfg = adapted_neo()
    # 7 examples, batch 2 -> 3 steps per epoch (the odd example is dropped); 2 epochs
    result = run_loop(tmp_path, model, cfg, gpt2_tokenizer, features[:7], features[20:23], epoch=2,
                      eval_strategy=strategy, eval_steps=eval_steps)
    assert result.steps == 6
    log = read_log(tmp_path)
    assert [r["step"] for r in log if "val_loss" in r] == expected
    assert [r["epoch"] for r in log] == pytest.approx([(s + 1) / 3 for s in range(6)])
    assert (tmp_path / "best").is_dir() == bool(expected)
    assert (tmp_path / "final" / "knowhira_adapter.safetensors").is_file()
    assert (result.best_value is None) == (not expected)


@pytest.mark.parametrize("patience,stop_step,best_step", [(1, 4, 2), (2, 6, 2), (0, 8, 8)])
def test_early_stopping(tmp_path, features, gpt2_tokenizer, monkeypatch, patience, stop_step, best_step):
    scripted = iter([2.0, 2.5, 2.4, 1.0])  # evaluations at steps 2, 4, 6, 8
    monkeypatch.setattr(loop, "validate", lambda *a, **k: {"val_loss": next(scripted)})
    model, cfg = adapted_neo()
    result = run_loop(tmp_path, model, cfg, gpt2_tokenizer, features[:20], features[20:22],
                      max_steps=8, eval_strategy="steps", eval_steps=2, save_steps=2,
                      keep_checkpoints=10, early_stop_patience=patience)
    assert result.steps == stop_step and result.stopped_early == (patience > 0)
    assert result.best_value == (2.0 if best_step == 2 else 1.0)
    log = read_log(tmp_path)
    assert log[-1]["step"] == stop_step
    assert [r["val_loss"] for r in log if "val_loss" in r] == [2.0, 2.5, 2.4, 1.0][:stop_step // 2]
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step_{stop_step:06d}"
    # best/ holds the adapter of the best evaluation's step
    best = load_file(str(tmp_path / "best" / "knowhira_adapter.safetensors"))
    at_best = load_file(str(tmp_path / "checkpoints" / f"step_{best_step:06d}" / "trainable.safetensors"))
    a_keys = [k for k in best if k.endswith(".hira_A")]
    assert len(a_keys) == 10
    for k in a_keys:
        assert torch.equal(best[k], at_best[k])
    final = load_file(str(tmp_path / "final" / "knowhira_adapter.safetensors"))
    assert any(not torch.equal(final[k], best[k]) for k in a_keys) == (best_step != stop_step)


# ---- KnowHiRA's gate at its own learning rate (--gate_lr_scale) -------------------------------
def test_gate_lr_scale_puts_the_gates_in_their_own_group_and_moves_them_faster(features, gpt2_tokenizer, tmp_path):
    def gates_after(scale):
        cfg = KnowHiRAConfig(r_ab=4, target_modules=TARGETS, gate_lr_scale=scale)
        model, method = build(tiny_model("gpt_neo"), cfg), method_of(cfg)
        t = Trainer(Accelerator(cpu=True), model, gpt2_tokenizer, features[:8], [],
                    LoopConfig(batch=2, lr=1e-3, max_steps=4, eval_strategy="no", warmup=2),
                    tmp_path / str(scale), lambda m, d, write: method.save(m, cfg, d, write),
                    lr_scales=method.lr_scales(cfg))
        gates = [p for n, p in model.named_parameters() if n.endswith(".gate")]
        before = torch.cat([g.detach().clone() for g in gates])
        groups = t.optimizer.param_groups
        for _ in range(4):
            t.train_step()
        return groups, gates, (torch.cat([g.detach() for g in gates]) - before).abs()

    groups, gates, moved_1 = gates_after(1.0)
    assert len(groups) == 1
    groups, gates, moved_30 = gates_after(30.0)
    assert len(groups) == 2 and {id(p) for p in groups[1]["params"]} == {id(g) for g in gates}
    # the schedule scales both groups alike: after 4 steps (2 warmup, cosine to 0 at step 4) the ratio holds
    assert groups[1]["initial_lr"] == pytest.approx(30 * groups[0]["initial_lr"])
    assert moved_1.max() > 0  # B is no longer zero after step 1, so the gates get gradient
    # Adam's step is ~lr whatever the gradient's size: the gates move ~30x as far
    assert moved_30.mean() > 10 * moved_1.mean()
    assert [g["lr"] for g in param_groups(tiny_model("gpt2"), 0.5, {})] == [0.5]


# ---- the Trainer object: one step at a time equals run(); fractional epochs round up ----------
def test_trainer_train_step_equals_run(tmp_path, features, gpt2_tokenizer):
    def trainer(run_dir, **kw):
        model, cfg = adapted_neo()
        method = method_of(cfg)
        settings = {"batch": 2, "lr": 1e-2, "save_steps": 1000, "eval_strategy": "no", "max_steps": 3, **kw}
        return Trainer(Accelerator(cpu=True), model, gpt2_tokenizer, features[:8], [], LoopConfig(**settings),
                       run_dir, lambda m, d, write: method.save(m, cfg, d, write), method.regularizer(cfg))

    t = trainer(tmp_path / "steps")
    assert (t.steps_per_epoch, t.total_steps, t.step, t.reg_weight) == (4, 3, 0, 1e-3)
    outs = [t.train_step() for _ in range(3)]
    assert t.step == 3 and not (tmp_path / "steps").exists()  # train_step writes nothing
    assert all(o.keys() == {"epoch", "loss_task", "loss_reg", "lr", "grad_norm", "tokens", "pad_frac"} for o in outs)
    assert [o["epoch"] for o in outs] == [0.25, 0.5, 0.75]
    assert all(o["loss_reg"] > 0 and o["tokens"] > 0 for o in outs)

    result = trainer(tmp_path / "run").run()  # the same model, data and settings through run()
    log = read_log(tmp_path / "run")
    assert result.steps == 3 and [r["step"] for r in log] == [1, 2, 3]
    for o, r in zip(outs, log):
        assert (o["loss_task"], o["loss_reg"], o["lr"]) == (r["loss_task"], r["loss_reg"], r["lr"])

    # --epoch is a float: total steps = ceil(epoch x steps per epoch) (4 steps per epoch here)
    for epoch, total in [(0.5, 2), (1.1, 5), (3.0, 12), (0.01, 1)]:
        assert trainer(tmp_path / "e", max_steps=-1, epoch=epoch).total_steps == total
    assert trainer(tmp_path / "e", max_steps=7, epoch=0.5).total_steps == 7  # --max_steps > 0 overrides
    with pytest.raises(ValueError, match="fewer than one effective batch"):
        trainer(tmp_path / "e", batch=3, grad_acc=3)


def test_validate_at_start_logs_the_untrained_model_as_step_0(tmp_path, features, gpt2_tokenizer):
    model, cfg = adapted_neo()
    run_loop(tmp_path / "run", model, cfg, gpt2_tokenizer, features[:8], features[8:12], max_steps=2,
             eval_strategy="steps", eval_steps=2, validate_at_start=True)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2] and set(log[0]) >= {"step", "val_loss"}
    assert "loss_task" not in log[0] and log[0]["val_loss"] != log[2]["val_loss"]
    # B = 0 at step 0: the untrained model's validation loss is the base model's
    base = tiny_model("gpt_neo")
    batch = Collator(gpt2_tokenizer)(features[8:12])
    with torch.no_grad():
        loss, n = task_loss_sum(base.eval(), batch)
    assert log[0]["val_loss"] == pytest.approx(loss.item() / n, rel=1e-5)


def test_regulariser_stays_fp32_under_bf16_autocast(tmp_path, features, gpt2_tokenizer):
    """--mixed_precision bf16 autocasts the model's forward, not L_ortho: the logged regulariser of the
    first step is the fp32 value on the initial weights (under autocast its r x r Gram matmuls ran in bf16)."""
    model, cfg = adapted_neo()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a random B, so that ||BᵀB - I||² carries bits bf16 loses
        for layer in adapter_layers(model).values():
            layer.hira_B.copy_(0.3 * torch.randn(layer.hira_B.shape, generator=g))
    from accelerate.state import AcceleratorState

    method = method_of(cfg)
    expected = ortho_loss(model).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ortho_loss(model).item() != expected  # the bf16 value differs: the test can tell them apart
    AcceleratorState._reset_state(True)  # accelerate's process-wide state: this test's precision, then reset
    try:
        acc = Accelerator(cpu=True, mixed_precision="bf16")
        trainer = Trainer(acc, model, gpt2_tokenizer, features[:8], [],
                          LoopConfig(batch=2, lr=1e-2, eval_strategy="no", max_steps=1, mixed_precision="bf16"),
                          tmp_path, lambda m, d, write: method.save(m, cfg, d, write), method.regularizer(cfg))
        assert trainer.train_step()["loss_reg"] == expected
    finally:
        AcceleratorState._reset_state(True)


def test_a_checkpoint_without_a_newer_option_resumes(tmp_path):
    """A checkpoint records the run's configuration; an option added since (absent from it) matches when it
    is at its default None, and any real difference is still refused, naming it."""
    from training.checkpoint import load_checkpoint, save_checkpoint

    def state():
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    model, optimizer, scheduler = state()
    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"config": {"r_ab": 4}})
    load_checkpoint(path, *state(), {"r_ab": 4, "attn_implementation": None})
    with pytest.raises(ValueError, match=r"another configuration than the run's args.json: attn_implementation "
                                         r"None -> 'sdpa'"):
        load_checkpoint(path, *state(), {"r_ab": 4, "attn_implementation": "sdpa"})


def test_train_summary_leaves_the_pause_of_a_resume_out(tmp_path):
    """The median step time of a killed and resumed run: the span ending at the first step logged after the
    resume holds the pause between the two processes, and is not a step."""
    from training.loop import LoopResult
    from training.recipe import train_summary

    times = {1: 0.0, 2: 900.0, 3: 901.0}  # killed after step 1, resumed 15 min later
    lines = [{"step": s, "time": t, "loss_task": 1.0, **({"resumed": True} if s == 2 else {})}
             for s, t in times.items()]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = train_summary(tmp_path, LoopResult(3, "val_loss", None), torch.device("cpu"))
    assert summary["median_step_s"] == 1.0  # with the pause: the median of 900 and 1, 450.5
