#!/usr/bin/python3
"""The PyTorch side of benchmarks/compare_pytorch.sh: the training step of bench_training.cpp in
plain PyTorch (no transformers), to compare tokens/s on the same machine.

Same model as dca::DecoderConfig::gpt2: learned token and position embeddings, pre-norm blocks
(LayerNorm eps 1e-5, fused q|k|v projection, causal softmax attention, output projection, MLP
d -> 4d -> d with tanh-approximated GELU), final LayerNorm, output head tied to the token
embeddings; every linear layer has a bias. Same step: forward, mean cross-entropy, backward,
AdamW (lr 1e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices but not on biases,
norms or embeddings), zero_grad. float32, random token ids and targets.

Usage: [LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp] /usr/bin/python3 \
           benchmarks/pytorch_training_step.py [--threads 1 2] [--steps 20] [--config tiny small]
Prints one line per (config, threads): median and best step time and tokens/s (median) and the
GFLOP/s of bench_training.cpp's accounting, after a header naming the BLAS and its kernel set
(OpenBLAS's core, which OPENBLAS_CORETYPE overrides). Debian's torch reaches OpenBLAS through libblas.so.3;
the library path above selects the OpenMP flavour, PyTorch's fastest here (compare_pytorch.sh
sets it), and the script sets OpenBLAS's thread count to --threads whichever flavour is loaded.
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from torch_openblas import loaded_openblas, openblas_core, set_threads

CONFIGS = {  # name: (layers, heads, d, T, vocab, batch), as in bench_training.cpp
    "tiny": (2, 4, 128, 64, 96, 16),
    "small": (4, 4, 256, 128, 256, 8),
}


def flops_per_token(layers, d, t, vocab):
    """bench_training.cpp's accounting: 3x forward, matmuls + the full TxT attention products."""
    matmul = 2.0 * (12.0 * layers * d * d + vocab * d)
    attention = 4.0 * layers * t * d
    return 3.0 * (matmul + attention)


class Block(torch.nn.Module):
    def __init__(self, d, heads, t):
        super().__init__()
        self.heads = heads
        self.ln_1 = torch.nn.LayerNorm(d, eps=1e-5)
        self.c_attn = torch.nn.Linear(d, 3 * d)
        self.c_proj = torch.nn.Linear(d, d)
        self.ln_2 = torch.nn.LayerNorm(d, eps=1e-5)
        self.c_fc = torch.nn.Linear(d, 4 * d)
        self.mlp_proj = torch.nn.Linear(4 * d, d)
        self.register_buffer("mask", torch.ones(t, t, dtype=torch.bool).triu(1))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
        scores = scores.masked_fill(self.mask[:t, :t], float("-inf"))
        y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(torch.nn.Module):
    def __init__(self, layers, heads, d, t, vocab):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, d)
        self.wpe = torch.nn.Embedding(t, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads, t) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(d, eps=1e-5)
        for name, p in self.named_parameters():  # GPT-2 init, as dca's Decoder::init
            if name.endswith("bias"):
                torch.nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                torch.nn.init.normal_(p, 0.0, std)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied head


def run(name, threads, steps):
    layers, heads, d, t, vocab, batch = CONFIGS[name]
    set_threads(threads)
    torch.manual_seed(1)
    model = GPT2(layers, heads, d, t, vocab)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(("wte", "wpe"))]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith(("wte", "wpe")))]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach=True is PyTorch's faster multi-tensor AdamW (the CPU default is the per-tensor loop).
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    ids = torch.randint(0, vocab, (batch, t))
    targets = torch.randint(0, vocab, (batch, t))
    times = []
    for step in range(steps + 3):
        start = time.perf_counter()
        loss = F.cross_entropy(model(ids).view(-1, vocab), targets.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    tokens = batch * t
    median, best = statistics.median(times), min(times)
    print(f"pytorch {name:5s} threads={threads} step median {median * 1e3:8.2f} ms best {best * 1e3:8.2f} ms  "
          f"tokens/s {tokens / median:9.0f} (best {tokens / best:9.0f})  "
          f"GFLOP/s {tokens * flops_per_token(layers, d, t, vocab) / median * 1e-9:6.1f}  loss {loss.item():.4f}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    torch.ones(2, 2) @ torch.ones(2, 2)  # loads the BLAS
    print(f"# torch {torch.__version__}, BLAS {loaded_openblas() or 'not OpenBLAS'}, kernels {openblas_core() or '?'}")
    for name in args.config:
        for threads in args.threads:
            run(name, threads, args.steps)


if __name__ == "__main__":
    main()
