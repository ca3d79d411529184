"""PyTorch reference of one GRU4Rec training step, for timing comparisons on a GPU only.

The engine never imports torch; ``bench/gpu_check.sh`` / ``bench/cuda_bench.py`` use this
script, when torch is installed, as the yardstick for our CUDA step at the same shapes. It
follows the reference page the same way the engine does (our parameter layout, gates [r|z|n],
constrained embedding, one GRU layer, sampled cross-entropy with logq, Adagrad with plain
momentum, sparse updates of the item rows with duplicates summed first), with autograd for the
backward pass, like the official PyTorch release. Autograd materialises the dense gradient of
``Wy`` (n_items x H) every step; only its touched rows are applied.

Usage: ``python bench/torch_reference_step.py --hidden 100 --batch 64 --n-sample 2048
--n-items 40000 [--steps 200] [--device cuda]``; prints one JSON line with events/s.
NOTE: written without access to torch on the development machine; it has not been run there.
"""
from __future__ import annotations

import argparse
import json
import math
import time


def build(torch, H, n_items, device, seed=0):
    """Parameters in the engine's layout plus Adagrad/momentum state."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def uni(shape, s):
        return ((torch.rand(shape, generator=g) * 2 - 1) * s).to(device)

    def gate_init(rows, H):
        s = math.sqrt(6.0 / (rows + H))
        return torch.cat([uni((rows, H), s) for _ in range(3)], dim=1)

    params = {
        "Wx": gate_init(H, H), "bx": torch.zeros(3 * H, device=device),
        "Wh": gate_init(H, H), "bhn": torch.zeros(H, device=device),
        "Wy": uni((n_items, H), math.sqrt(6.0 / (n_items + H))),
        "By": torch.zeros(n_items, device=device),
    }
    for p in params.values():
        p.requires_grad_(True)
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    vel = {k: torch.zeros_like(p) for k, p in params.items()}
    return params, acc, vel


def step(torch, params, acc, vel, h, in_items, out_items, reset, sample, log_support,
         batch_size, logq, alpha, lr, momentum):
    """One step; returns (loss tensor, new hidden state). h: (R, H) previous state."""
    H = params["Wh"].shape[0]
    R = in_items.shape[0]
    h = h * (1 - reset.float())[:, None]
    x = params["Wy"][in_items]
    gx = x @ params["Wx"] + params["bx"]
    gh = h @ params["Wh"]
    r = torch.sigmoid(gx[:, :H] + gh[:, :H])
    z = torch.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = torch.tanh(gx[:, 2 * H:] + r * (gh[:, 2 * H:] + params["bhn"]))
    h_new = (1 - z) * n + z * h
    cols = torch.cat([out_items, sample])
    S = h_new @ params["Wy"][cols].T + params["By"][cols]
    if logq > 0:
        corr = torch.cat([logq * log_support[out_items], logq * alpha * log_support[sample]])
        S = S - corr
    p = torch.softmax(S, dim=1)
    loss = -torch.log(p[torch.arange(R, device=S.device), torch.arange(R, device=S.device)] + 1e-24).sum() / batch_size
    grads = torch.autograd.grad(loss, list(params.values()))
    with torch.no_grad():
        for (name, prm), g in zip(params.items(), grads):
            if name in ("Wy", "By"):
                idx = torch.cat([cols, in_items]) if name == "Wy" else cols
                rows = torch.unique(idx)  # autograd already summed duplicate rows
                g = g[rows]
                a = acc[name][rows] + g * g
                acc[name][rows] = a
                step_ = g / torch.sqrt(a + 1e-6)
                if momentum > 0:
                    v = momentum * vel[name][rows] - lr * step_
                    vel[name][rows] = v
                    prm[rows] += v
                else:
                    prm[rows] -= lr * step_
            else:
                acc[name] += g * g
                step_ = g / torch.sqrt(acc[name] + 1e-6)
                if momentum > 0:
                    vel[name].mul_(momentum).sub_(lr * step_)
                    prm += vel[name]
                else:
                    prm -= lr * step_
    return loss.detach(), h_new.detach()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n-sample", type=int, default=2048)
    parser.add_argument("--n-items", type=int, default=40000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("torch sees no CUDA device")
    dev = torch.device(args.device)
    params, acc, vel = build(torch, args.hidden, args.n_items, dev)
    gen = torch.Generator(device="cpu").manual_seed(1)
    support = torch.randint(1, 1000, (args.n_items,), generator=gen).float().to(dev)
    log_support = torch.log(support)
    B, total = args.batch, args.steps + args.warmup
    ins = torch.randint(0, args.n_items, (total, B), generator=gen).to(dev)
    outs = torch.randint(0, args.n_items, (total, B), generator=gen).to(dev)
    resets = (torch.rand((total, B), generator=gen) < 0.15).to(dev)
    samples = torch.randint(0, args.n_items, (total, args.n_sample), generator=gen).to(dev)
    h = torch.zeros(B, args.hidden, device=dev)
    loss_sum = torch.zeros((), device=dev)
    for t in range(total):
        if t == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss, h = step(torch, params, acc, vel, h, ins[t], outs[t], resets[t], samples[t],
                       log_support, B, 1.0, 0.5, 0.2, 0.2)
        loss_sum += loss
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    print(json.dumps(dict(impl="torch", torch=torch.__version__, device=str(dev),
                          hidden=args.hidden, batch=B, n_sample=args.n_sample,
                          n_items=args.n_items, steps=args.steps, seconds=elapsed,
                          events_per_s=B * args.steps / elapsed,
                          loss_mean=float(loss_sum) / total)))


if __name__ == "__main__":
    main()
