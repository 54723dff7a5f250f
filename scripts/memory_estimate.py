"""Computed (not measured) training memory per GPU for GPT-Neo-1.3B and Llama-2-7B.

    python scripts/memory_estimate.py [--batch 4] [--seq 256] [--r 32] [--gpus 1 2 8]

Bytes per element: frozen base in bf16 (2); trainable parameters in fp32 with fp32 gradients and
two AdamW moments (4 + 4 + 8 = 16 bytes per trainable parameter). Full fine-tuning keeps bf16
weights plus an fp32 master copy, fp32 gradients and AdamW moments (2 + 4 + 4 + 8 = 18 bytes per
parameter). Activations (bf16) per layer and sequence follow Korthikanti et al. 2022 without
sequence parallelism: s·b·h·(34 + 5·a·s/h) bytes; with gradient checkpointing only the layer
inputs are kept, 2·s·b·h bytes per layer, plus one layer's full activations during recomputation.
The Hadamard layers add transient out x in buffers for one layer at a time (the largest): in
backward the fp32 effective weight, its compute-dtype copy, the fp32 weight gradient Gw and
H = s·W0⊙Gw, about 16 bytes per element.
DDP replicates everything but activations scale with the per-device batch; FSDP full-shard divides
parameters, gradients and optimizer state by the number of GPUs.
"""
import argparse

MODELS = {
    # name: hidden, layers, heads, intermediate, vocab, targets (out, in) per layer for q,k,v,up,down
    "GPT-Neo-1.3B": dict(h=2048, L=24, a=16, ff=8192, V=50257),
    "Llama-2-7B": dict(h=4096, L=32, a=32, ff=11008, V=32000),
}
GiB = 1024 ** 3
# what sets each method's memory: which parameters train, and the Hadamard layers' transient buffers
PROFILES = {"knowhira": dict(trains_all=False, hadamard=True), "fft": dict(trains_all=True, hadamard=False)}


def counts(m, r):
    h, ff, L, V = m["h"], m["ff"], m["L"], m["V"]
    attn, mlp = 4 * h * h, (3 if ff == 11008 else 2) * h * ff  # Llama's MLP has gate, up, down
    total = L * (attn + mlp) + V * h * (1 if ff != 11008 else 2)  # GPT-Neo ties lm_head
    shapes = [(h, h)] * 3 + [(ff, h), (h, ff)]  # q, k, v, up (c_fc), down (c_proj)
    knowhira = L * sum(r * (o + i) + r for o, i in shapes)
    largest = max(o * i for o, i in shapes)
    return total, knowhira, largest


def estimate(name, m, r, b, s, gpus, profile, grad_ckpt, fsdp):
    total, trainable, largest = counts(m, r)
    h, L, a = m["h"], m["L"], m["a"]
    shard = gpus if fsdp else 1
    weights, state = 2 * total / shard, 16 * (total if profile["trains_all"] else trainable) / shard
    per_layer = s * b * h * (34 + 5 * a * s / h)
    act = (L * 2 * s * b * h + per_layer) if grad_ckpt else L * per_layer
    act += 4 * s * b * m["V"]  # fp32 logits
    transient = 16 * largest if profile["hadamard"] else 0
    return weights, state, act, transient


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--r", type=int, default=32)
    args = p.parse_args()
    print(f"per-GPU memory, batch {args.batch} x {args.seq} tokens per GPU, r = {args.r}, "
          f"targets q,k,v,up,down (GiB; computed)\n")
    print("| model | method | setup | weights (bf16) | trainable state (grads, AdamW; fft + fp32 master) | activations | Hadamard transient | total |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    setups = [("1 GPU", 1, False, False), ("1 GPU, grad ckpt", 1, True, False),
              ("8 GPUs FSDP full-shard, grad ckpt", 8, True, True)]
    for name, m in MODELS.items():
        total, trainable, _ = counts(m, args.r)
        for method, profile in PROFILES.items():
            for label, gpus, ckpt, fsdp in setups:
                w, st, act, tr = estimate(name, m, args.r, args.batch, args.seq, gpus, profile, ckpt, fsdp)
                print(f"| {name} ({total / 1e9:.2f}B; KnowHiRA {trainable / 1e6:.1f}M trainable) | {method} "
                      f"| {label} | {w / GiB:.1f} | {st / GiB:.2f} | {act / GiB:.1f} | {tr / GiB:.2f} "
                      f"| {(w + st + act + tr) / GiB:.1f} |")


if __name__ == "__main__":
    main()
