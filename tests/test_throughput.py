"""Doing less work gives the same numbers: the output layer only at the labelled positions
(models/output_head.OutputHead; with FSDP2 too: tests/test_distributed.py), length-grouped batches (training/order.epoch_order) and single-pass scoring
(eval/scoring.py), each against the straightforward computation. Tiny RANDOMLY INITIALISED models; the
two-process and resume equalities with grouping on are tests/test_distributed.py and test_train_cli.py
(grouping is the default)."""
import pytest
import torch

from conftest import tiny_model
from models.methods import build, get_method
from models.output_head import OutputHead
from training.loss import task_loss_sum
from training.order import MEGA_BATCHES, epoch_order
from utils.batching import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("single_thread")
ARCHS = ("llama", "gpt2", "gpt_neo")


def batch_of(seed: int, all_labelled: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (3, 19), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # right padding
    mask[2, 16:] = 0
    labels = ids.clone()
    if not all_labelled:
        labels[:, :11] = IGNORE_INDEX  # the prompt
    labels[mask == 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def adapted(arch: str, method: str | None):
    """tiny_model(arch) with `method` built on (rank 4 where it has one), or bare (None)."""
    model = tiny_model(arch)
    if method:
        model = build(model, get_method(method).config_cls.from_values({"r_ab": 4}))
    return model.eval()  # dropout off: the two paths must see the same function


def loss_and_grads(model, batch, head):
    params = [p for p in model.parameters() if p.requires_grad]
    loss, n = task_loss_sum(model, batch, head)
    return loss, n, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method", ["knowhira", "lora", "fft"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("all_labelled", [False, True], ids=["response", "train_on_inputs"])
def test_head_at_labels_equals_full_logits(arch, method, all_labelled):
    model = adapted(arch, method)
    batch = batch_of(3, all_labelled)
    head = OutputHead.of(model)
    assert head is not None and head.head is model.get_output_embeddings()
    full, n_full, g_full = loss_and_grads(model, batch, None)
    kept, n_kept, g_kept = loss_and_grads(model, batch, head)
    assert n_full == n_kept == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert kept.item() == pytest.approx(full.item(), rel=1e-6)
    for a, b in zip(g_full, g_kept):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # the output layer saw only the labelled rows: no batch x length x vocabulary logits were formed
    seen = []
    hook = head.head.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    task_loss_sum(model, batch, head)
    hook.remove()
    assert seen == [(n_full, model.config.vocab_size)]


def test_grouped_order_is_a_seeded_permutation_of_length_sorted_batches():
    g = torch.Generator().manual_seed(0)
    n, batch = 1003, 8
    lengths = torch.randint(20, 300, (n,), generator=g).tolist()
    order = epoch_order(n, 5, 2, lengths, batch)
    assert order == epoch_order(n, 5, 2, lengths, batch)  # a pure function of (seed, epoch)
    assert sorted(order) == list(range(n)) and order != epoch_order(n, 5, 3, lengths, batch)
    plain = epoch_order(n, 5, 2)
    used = n - n % batch
    assert order[used:] == plain[used:]  # the remainder (never a full batch) is the plain order's tail
    mega = MEGA_BATCHES * batch
    chunks = [sorted(plain[s:s + mega]) for s in range(0, used, mega)]
    batches = [order[s:s + batch] for s in range(0, used, batch)]
    for b in batches:  # each batch: consecutive records of one length-sorted mega-batch
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
        assert sum(set(b) <= set(c) for c in chunks) == 1

    def padding(o):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in (o[s:s + batch] for s in range(0, used, batch)))
    assert padding(order) < 0.2 * padding(plain)  # what it is for


def direct_score(model, context, continuation):
    with torch.no_grad():
        logp = model(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
    return sum(logp[len(context) - 1 + k, t].item() for k, t in enumerate(continuation))


@pytest.mark.parametrize("arch", ARCHS)
def test_single_pass_scores_equal_one_forward_per_pair(arch):
    from eval.scoring import score_token_pairs

    model = adapted(arch, {"llama": "knowhira"}.get(arch))
    g = torch.Generator().manual_seed(1)

    def tokens(k):
        return torch.randint(0, 50257, (k,), generator=g).tolist()
    contexts = [tokens(k) for k in (9, 3, 14, 1, 9)]
    pairs = [(c, tokens(k)) for c in contexts for k in (1, 4, 2)]  # shared contexts, mixed lengths
    pairs.append(pairs[4])  # a repeated pair
    for batch_size in (1, 2, 8):
        scores = score_token_pairs(model, pairs, pad_id=50256, batch_size=batch_size, show_progress=False)
        for (c, r), s in zip(pairs, scores):
            assert s == pytest.approx(direct_score(model, c, r), abs=1e-4)
        assert scores[-1] == scores[4]


@pytest.mark.parametrize("arch", ARCHS)
def test_single_pass_scores_with_very_different_continuation_lengths(arch):
    """Continuations of 1 to 40 tokens in one batch: they run in several length buckets, each from its
    slice of the contexts' cache, with the head at real positions only; every pair as if alone (1e-5)."""
    from eval.scoring import buckets, score_token_pairs

    model = adapted(arch, None)
    g = torch.Generator().manual_seed(2)

    def tokens(k):
        return torch.randint(0, 50257, (k,), generator=g).tolist()
    contexts = [tokens(k) for k in (21, 5, 12)]
    lengths = (40, 1, 2, 33, 3, 17, 2, 39, 1)
    pairs = [(contexts[i % 3], tokens(k)) for i, k in enumerate(lengths)]
    assert len(buckets(sorted((k - 1 for k in lengths if k > 1), reverse=True))) > 1  # several forwards
    scores = score_token_pairs(model, pairs, pad_id=50256, batch_size=3, show_progress=False)
    for (c, r), s in zip(pairs, scores):
        assert s == pytest.approx(direct_score(model, c, r), abs=1e-5)


def test_buckets_minimise_padded_positions_plus_a_cost_per_forward():
    """The dynamic programme against every split of a sorted list (brute force)."""
    from itertools import combinations

    from eval.scoring import buckets

    def total(lengths, spans, cost):
        return sum((b - a) * lengths[a] + cost for a, b in spans)
    for lengths in ([40, 39, 33, 17, 3, 2, 2, 1], [5, 5, 5, 5], [9], [30, 2, 2, 2, 2, 2, 2, 2, 2, 1]):
        for cost in (0, 4, 16, 1000):
            spans = buckets(lengths, cost)
            assert [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] and spans[-1][1] == len(lengths)
            n = len(lengths)
            every = [list(zip((0,) + cut, cut + (n,))) for k in range(n) for cut in combinations(range(1, n), k)]
            assert total(lengths, spans, cost) == min(total(lengths, s, cost) for s in every)
    assert buckets([30, 2, 2, 1], 4) == [(0, 1), (1, 4)]  # the long row alone: 30 + 6 + 2 · 4 < 4 · 30 + 4
    assert buckets([30, 2, 2, 1], 1000) == [(0, 4)]  # a forward dearer than any padding: one
    assert buckets([]) == []
