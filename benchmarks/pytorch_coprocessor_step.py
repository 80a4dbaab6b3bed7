#!/usr/bin/python3
"""The PyTorch side of benchmarks/compare_pytorch_coprocessor.sh: the coprocessor training step of
bench_coprocessor.cpp (BM_CoprocessorTrainingStep) in plain PyTorch (no transformers), to compare
step times on the same machine, and to check that both compute the same loss.

The step. A frozen decoder reads B sequences of T tokens; a coprocessor (the decoder's architecture,
initialised from its weights, trained) reads the decoder's key/value cache up to each of K points t
per sequence together with N_L = 16 trainable soft tokens (positions t+1 .. t+N_L, causal among
themselves) and writes N_L latents, z = E[x_t] + h·Wᵀ: the insertion token's embedding in the
decoder's table plus the coprocessor's final-norm output h through a latent projection W that starts
at zero (dca's LatentForm::residual). The frozen decoder reads [z_1 .. z_N_L, x_{t+1} .. x_{t+N_A−1}]
after its cache prefix 0..t, the latents at position t and the ahead tokens at t+1, t+2, ...; the
last latent predicts x_{t+1}, ahead token x_{t+i} predicts x_{t+i+1}. The loss is the mean
cross-entropy of the N_A = 16 ahead tokens over all B·K groups (UniformAhead). Then backward,
AdamW (lr 1e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on every trained parameter of rank 2
whose name holds none of "embed", "wte", "wpe": here the coprocessor's matrices, its soft tokens and
W; not its biases, norms and position table), zero_grad. Trained: every coprocessor weight, the soft
tokens and W (the coprocessor's token table and, untied, its head are never read: no gradient, no
update). float32.

Two ways to write it, --variant:
  dense  as the paper describes it (dca's coproc/dense_reference.hpp): per batch row one extended
         sequence [x_0 .. x_{T−1}, group_1, ..., group_K], group_j = [N_L latents][N_A−1 ahead
         tokens], through the decoder with one dense (T + K·(N_L+N_A−1))² boolean mask, and the
         K·N_L soft tokens through the coprocessor as one block against the decoder's cache with
         the matching [K·N_L, T + K·N_L] mask. The cache comes from a no-grad pass over the tokens.
  loop   a Python loop over the K groups, each running the coprocessor on its N_L soft tokens and
         then the decoder on [z_j, ahead tokens] against the cached keys/values of tokens 0..t_j (as
         past keys/values; with B > 1, the longest prefix of the batch and a mask for the others).
Both build their masks and indices inside the step, as a training loop drawing new points must.

Models, as dca's DecoderConfig presets: "small" is bench_coprocessor's GPT-2 style decoder (L=4, H=4,
d=256, V=256, learned positions, 256 of them, pre-LayerNorm eps 1e-5, fused q|k|v, tanh-GELU MLP of
4d, biases, tied head), T=256, B=1, K = 8, 16, 32, 64; "reproduction" is examples/reproduce's default
profile (Llama style: d=128, L=4, H=4, RMSNorm eps 1e-6, rotary θ=10000 in rotate-half layout, SwiGLU
MLP of 384, no biases, untied head), T=128, B=8, K=16. Timing runs start from GPT-2 initialisation
(dca's Decoder::init scheme, not its random stream): weights N(0, 0.02²), the projections into the
residual stream N(0, (0.02/√(2L))²), biases 0, norms 1; soft tokens N(0, 0.02²); W = 0.

Usage: [LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp] /usr/bin/python3 \\
           benchmarks/pytorch_coprocessor_step.py [--config small reproduction] [--K 8 16 32 64] \\
           [--variant dense loop] [--threads 1 2] [--steps 10]
       /usr/bin/python3 benchmarks/pytorch_coprocessor_step.py --check DIR [--tolerance 1e-4]

Timing prints one line per (variant, config, K, threads), after a header naming torch, the BLAS and
its kernel set (OpenBLAS's core, which OPENBLAS_CORETYPE overrides):
  pytorch dense small K=8 B=1 T=256 threads=1 step median 123.45 ms best 120.01 ms  ms/point 15.43 \\
      GFLOP/s 62.5  loss 5.5432
median and best over --steps steps after 3 warm-up steps; GFLOP/s is the median step's rate by
bench_coprocessor.cpp's FLOP model of the structured step (the useful work: the dense form computes
more). The script sets OpenBLAS's thread count to --threads whichever flavour is loaded.

--check DIR reads what `bench_coprocessor --dca_export DIR --K k` writes (the frozen decoder, the
coprocessor with its AdamW state, the batch, dca's loss, gradients and the parameters after one AdamW
step; safetensors read with struct + json + torch.frombuffer) and checks, for both variants, that
the loss is dca's within --tolerance (relative) and every gradient dca's within 1e-3 (relative L2),
and that PyTorch's AdamW applied to dca's state and gradients gives dca's updated parameters within
two float32 ulps (and decays the same ones). Any miss: a message with both numbers on stderr and
exit status 1.
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import torch
import torch.nn.functional as F

from torch_openblas import loaded_openblas, openblas_core, set_threads

N_LATENTS = 16  # N_L, Coprocessor<float, 16>
N_AHEAD = 16    # N_A, CoprocessorConfig{}.n_ahead
GRAD_TOLERANCE = 1e-3   # relative L2 difference of each gradient
# Each updated parameter within 1e-9 + 2.4e-7·|dca's| (two float32 ulps): a decay applied where dca
# applies none moves a parameter by lr·0.1·|p| = 1e-5·|p|, other AdamW differences by ~lr.
ADAMW_ATOL, ADAMW_RTOL = 1e-9, 2.4e-7


class ModelConfig:
    """A decoder architecture, as dca's DecoderConfig presets gpt2 and llama set it."""

    def __init__(self, arch, vocab, d, layers, heads, kv_heads, mlp, max_positions, norm_eps, rope_theta=10000.0,
                 head_dim=None, tied=True):
        self.arch, self.vocab, self.d, self.layers, self.heads = arch, vocab, d, layers, heads
        self.kv_heads, self.mlp, self.max_positions, self.norm_eps = kv_heads, mlp, max_positions, norm_eps
        self.rope_theta, self.head_dim, self.tied = rope_theta, head_dim or d // heads, tied

    @staticmethod
    def gpt2(vocab, d, layers, heads, max_positions):
        return ModelConfig("gpt2", vocab, d, layers, heads, heads, 4 * d, max_positions, 1e-5)

    @staticmethod
    def llama(vocab, d, layers, heads, mlp, max_positions=1024):
        return ModelConfig("llama", vocab, d, layers, heads, heads, mlp, max_positions, 1e-6, tied=False)

    @staticmethod
    def from_hf(config):
        """From a config.json as dca's hf_config_to_json writes it (GPT-2 or Llama)."""
        if config["model_type"] == "gpt2":
            return ModelConfig("gpt2", config["vocab_size"], config["n_embd"], config["n_layer"], config["n_head"],
                               config["n_head"], config.get("n_inner") or 4 * config["n_embd"], config["n_positions"],
                               config["layer_norm_epsilon"])
        if config["model_type"] == "llama":
            return ModelConfig("llama", config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
                               config["num_attention_heads"], config["num_key_value_heads"],
                               config["intermediate_size"], config["max_position_embeddings"], config["rms_norm_eps"],
                               config.get("rope_theta", 10000.0), config.get("head_dim"),
                               config.get("tie_word_embeddings", False))
        raise SystemExit(f"unsupported model_type {config['model_type']!r} (gpt2 or llama)")

    # Hugging Face names, as dca's nn/names.hpp
    def token_embedding(self):
        return "transformer.wte.weight" if self.arch == "gpt2" else "model.embed_tokens.weight"

    def head(self):
        return self.token_embedding() if self.tied else "lm_head.weight"

    def layer(self, l):
        return f"transformer.h.{l}." if self.arch == "gpt2" else f"model.layers.{l}."


PRESETS = {  # name: (model, T, B, default K list), as bench_coprocessor.cpp's shapes
    "small": (ModelConfig.gpt2(vocab=256, d=256, layers=4, heads=4, max_positions=256), 256, 1, [8, 16, 32, 64]),
    "reproduction": (ModelConfig.llama(vocab=256, d=128, layers=4, heads=4, mlp=384), 128, 8, [16]),
}


def init_decoder(cfg, generator):
    """GPT-2 initialisation of every weight (dca's Decoder::init scheme), Hugging Face names."""
    d, q, kv, std = cfg.d, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, 0.02
    residual = std / math.sqrt(2 * cfg.layers)
    p = {}

    def normal(name, shape, s=std):
        p[name] = torch.randn(shape, generator=generator) * s

    normal(cfg.token_embedding(), (cfg.vocab, d))
    if cfg.arch == "gpt2":
        normal("transformer.wpe.weight", (cfg.max_positions, d))
        for l in range(cfg.layers):
            n = cfg.layer(l)
            for norm in ("ln_1", "ln_2"):
                p[n + norm + ".weight"], p[n + norm + ".bias"] = torch.ones(d), torch.zeros(d)
            normal(n + "attn.c_attn.weight", (d, 3 * d))  # Conv1D layout [in, out]
            normal(n + "attn.c_proj.weight", (d, d), residual)
            normal(n + "mlp.c_fc.weight", (d, cfg.mlp))
            normal(n + "mlp.c_proj.weight", (cfg.mlp, d), residual)
            for bias, width in (("attn.c_attn", 3 * d), ("attn.c_proj", d), ("mlp.c_fc", cfg.mlp), ("mlp.c_proj", d)):
                p[n + bias + ".bias"] = torch.zeros(width)
        p["transformer.ln_f.weight"], p["transformer.ln_f.bias"] = torch.ones(d), torch.zeros(d)
    else:
        for l in range(cfg.layers):
            n = cfg.layer(l)
            p[n + "input_layernorm.weight"], p[n + "post_attention_layernorm.weight"] = torch.ones(d), torch.ones(d)
            normal(n + "self_attn.q_proj.weight", (q, d))  # nn.Linear layout [out, in]
            normal(n + "self_attn.k_proj.weight", (kv, d))
            normal(n + "self_attn.v_proj.weight", (kv, d))
            normal(n + "self_attn.o_proj.weight", (d, q), residual)
            normal(n + "mlp.gate_proj.weight", (cfg.mlp, d))
            normal(n + "mlp.up_proj.weight", (cfg.mlp, d))
            normal(n + "mlp.down_proj.weight", (d, cfg.mlp), residual)
        p["model.norm.weight"] = torch.ones(d)
        if not cfg.tied:
            normal("lm_head.weight", (cfg.vocab, d))
    return p


# ---- the model, as functions of a dict of named parameters -------------------------------------------

def norm(cfg, p, name, x):
    if cfg.arch == "gpt2":
        return F.layer_norm(x, (cfg.d,), p[name + ".weight"], p[name + ".bias"], cfg.norm_eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * p[name + ".weight"]


def conv1d(x, p, name):
    """GPT-2's Conv1D: x·W + b with W stored [in, out], as one addmm (what transformers runs)."""
    weight = p[name + ".weight"]
    return torch.addmm(p[name + ".bias"], x.reshape(-1, weight.shape[0]), weight).view(*x.shape[:-1], weight.shape[1])


def rotary(cfg, positions):
    """cos, sin [B, 1, N, D/2] of positions [B, N]: angles in double, as dca's default RopeConfig."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(half, dtype=torch.float64) * 2 / cfg.head_dim)
    angles = positions.to(torch.float64)[:, None, :, None] * inv_freq
    return angles.cos().float(), angles.sin().float()


def rotate(x, cos, sin):
    """Hugging Face's rotate-half rotary embedding of x [B, H, N, D]."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def forward(cfg, p, x, positions, mask, past=None, keep=False, logits=True):
    """The decoder over input embeddings x [B, N, d] at positions [B, N]. `mask` [B, 1, N, P + N]
    (True: visible) covers the P past keys/values (per layer ([B, Hkv, P, D], [B, Hkv, P, D]), after
    rotary) and the rows' own. Returns the final hidden states, the logits (or None) and, with
    `keep`, every layer's keys and values."""
    B, N, d = x.shape
    H, Hkv, D = cfg.heads, cfg.kv_heads, cfg.head_dim
    hidden_keys = ~mask
    if cfg.arch == "gpt2":
        x = x + p["transformer.wpe.weight"][positions]
    else:
        cos, sin = rotary(cfg, positions)
    kept = []
    for l in range(cfg.layers):
        n = cfg.layer(l)
        h = norm(cfg, p, n + ("ln_1" if cfg.arch == "gpt2" else "input_layernorm"), x)
        if cfg.arch == "gpt2":
            q, k, v = conv1d(h, p, n + "attn.c_attn").split(d, dim=2)
        else:
            q = F.linear(h, p[n + "self_attn.q_proj.weight"])
            k = F.linear(h, p[n + "self_attn.k_proj.weight"])
            v = F.linear(h, p[n + "self_attn.v_proj.weight"])
        q = q.view(B, N, H, D).transpose(1, 2)
        k = k.view(B, N, Hkv, D).transpose(1, 2)
        v = v.view(B, N, Hkv, D).transpose(1, 2)
        if cfg.arch != "gpt2":
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if keep:
            kept.append((k, v))
        if past is not None:
            k = torch.cat((past[l][0], k), dim=2)
            v = torch.cat((past[l][1], v), dim=2)
        if Hkv != H:
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        # The scale goes on q ([N, D] rather than [N, P + N] products); the mask is filled in place
        # (the product's backward needs its inputs only): two passes over the scores saved.
        scores = torch.matmul(q * (1.0 / math.sqrt(D)), k.transpose(-2, -1)).masked_fill_(hidden_keys, float("-inf"))
        attended = torch.matmul(F.softmax(scores, dim=-1), v)
        attended = attended.transpose(1, 2).reshape(B, N, H * D)
        if cfg.arch == "gpt2":
            x = x + conv1d(attended, p, n + "attn.c_proj")
            h = F.gelu(conv1d(norm(cfg, p, n + "ln_2", x), p, n + "mlp.c_fc"), approximate="tanh")
            x = x + conv1d(h, p, n + "mlp.c_proj")
        else:
            x = x + F.linear(attended, p[n + "self_attn.o_proj.weight"])
            h = norm(cfg, p, n + "post_attention_layernorm", x)
            h = F.silu(F.linear(h, p[n + "mlp.gate_proj.weight"])) * F.linear(h, p[n + "mlp.up_proj.weight"])
            x = x + F.linear(h, p[n + "mlp.down_proj.weight"])
    hidden = norm(cfg, p, "transformer.ln_f" if cfg.arch == "gpt2" else "model.norm", x)
    out = torch.matmul(hidden, p[cfg.head()].t()) if logits else None
    return hidden, out, kept


def causal_mask(n):
    return torch.ones(n, n, dtype=torch.bool).tril()[None, None]


def prefix_mask(t, prefix, n):
    """[B, 1, n, prefix + n]: row b's n rows see its cache rows 0..t_b (of `prefix`) and their own
    rows causally."""
    cache = torch.arange(prefix)[None, None, :] <= t[:, None, None]  # [B, 1, prefix]
    own = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.cat((cache.expand(-1, n, -1), own.expand(t.shape[0], n, n)), dim=2)[:, None]


# ---- the coprocessor step -----------------------------------------------------------------------------

class CoprocessorStep:
    """A frozen decoder, its coprocessor (model weights, soft tokens [N_L, d], latent projection W
    [d, d]) and the step's loss in either variant."""

    def __init__(self, cfg, decoder, coprocessor):
        self.cfg = cfg
        self.decoder = {name: t.detach().requires_grad_(False) for name, t in decoder.items()}
        self.coprocessor = {name: t.detach().clone().requires_grad_(True) for name, t in coprocessor.items()}
        self.soft = self.coprocessor["coprocessor.soft_tokens"]
        self.projection = self.coprocessor["coprocessor.latent_projection.weight"]

    def token_cache(self, ids):
        """The frozen decoder over the tokens: every layer's keys and values, as constants."""
        B, T = ids.shape
        with torch.no_grad():
            embeddings = self.decoder[self.cfg.token_embedding()][ids]
            return forward(self.cfg, self.decoder, embeddings, torch.arange(T).expand(B, T), causal_mask(T),
                           keep=True, logits=False)[2]

    def latents(self, h, tokens):
        """The residual form: the insertion tokens' embeddings [B, n] plus h [B, n, d]·Wᵀ."""
        return self.decoder[self.cfg.token_embedding()][tokens] + F.linear(h, self.projection)

    def loss(self, variant, ids, points):
        return self.loss_dense(ids, points) if variant == "dense" else self.loss_loop(ids, points)

    def loss_dense(self, ids, points):
        """The paper's form; returns the loss and the per-position means [N_A] (detached)."""
        cfg, E = self.cfg, self.decoder[self.cfg.token_embedding()]
        B, T = ids.shape
        K, NL, NA = points.shape[1], N_LATENTS, N_AHEAD
        R, S = NL + NA - 1, K * N_LATENTS
        cache = self.token_cache(ids)
        # The coprocessor: all K·N_L soft tokens as one block against the cache and themselves.
        group, local = torch.arange(S) // NL, torch.arange(S) % NL
        soft_points = points[:, group]  # [B, S]
        sees_cache = torch.arange(T)[None, None, :] <= soft_points[:, :, None]
        sees_soft = (group[:, None] == group[None, :]) & (local[None, :] <= local[:, None])
        soft_mask = torch.cat((sees_cache, sees_soft.expand(B, S, S)), dim=2)[:, None]
        h = forward(cfg, self.coprocessor, self.soft.repeat(K, 1).expand(B, S, cfg.d), soft_points + 1 + local,
                    soft_mask, past=cache, logits=False)[0]
        z = self.latents(h, ids.gather(1, soft_points)).view(B, K, NL, cfg.d)
        # The decoder: one extended sequence per row.
        ahead = torch.arange(1, NA)
        ahead_ids = ids.gather(1, (points[:, :, None] + ahead).view(B, -1)).view(B, K, NA - 1)
        groups = torch.cat((z, E[ahead_ids]), dim=2).view(B, K * R, cfg.d)
        x = torch.cat((E[ids], groups), dim=1)
        group_positions = torch.cat((points[:, :, None].expand(B, K, NL), points[:, :, None] + ahead), dim=2)
        positions = torch.cat((torch.arange(T).expand(B, T), group_positions.view(B, K * R)), dim=1)
        N = T + K * R
        row = torch.arange(N)
        in_group = row >= T
        g, r = (row - T).clamp(min=0) // R, (row - T).clamp(min=0) % R
        last_token = torch.where(in_group, points[:, g], row)  # [B, N]: the last token row each row sees
        sees_tokens = (row < T)[None, None, :] & (row[None, None, :] <= last_token[:, :, None])
        sees_group = in_group[:, None] & in_group[None, :] & (g[:, None] == g[None, :]) & (r[None, :] <= r[:, None])
        mask = (sees_tokens | sees_group)[:, None]
        logits = forward(cfg, self.decoder, x, positions, mask)[1][:, T:].view(B, K, R, cfg.vocab)
        targets = ids.gather(1, (points[:, :, None] + 1 + torch.arange(NA)).view(B, -1)).view(B, K, NA)
        losses = F.cross_entropy(logits[:, :, NL - 1:].reshape(-1, cfg.vocab), targets.reshape(-1),
                                 reduction="none").view(B * K, NA)
        return losses.mean(), losses.detach().mean(0)

    def loss_loop(self, ids, points):
        """A loop over the K groups against the cached prefix; same returns as loss_dense."""
        cfg, E = self.cfg, self.decoder[self.cfg.token_embedding()]
        B, T = ids.shape
        K, NL, NA = points.shape[1], N_LATENTS, N_AHEAD
        cache = self.token_cache(ids)
        soft = self.soft.expand(B, NL, cfg.d)
        latent, ahead, predicted = torch.arange(NL), torch.arange(1, NA), torch.arange(1, NA + 1)
        total, per_group = 0, []
        for j in range(K):
            t = points[:, j]
            prefix = int(t.max()) + 1
            past = [(k[:, :, :prefix], v[:, :, :prefix]) for k, v in cache]
            h = forward(cfg, self.coprocessor, soft, t[:, None] + 1 + latent, prefix_mask(t, prefix, NL), past,
                        logits=False)[0]
            z = self.latents(h, ids.gather(1, t[:, None]))  # [B, 1, d] + [B, N_L, d]
            x = torch.cat((z, E[ids.gather(1, t[:, None] + ahead)]), dim=1)
            positions = torch.cat((t[:, None].expand(B, NL), t[:, None] + ahead), dim=1)
            logits = forward(cfg, self.decoder, x, positions, prefix_mask(t, prefix, NL + NA - 1), past)[1]
            losses = F.cross_entropy(logits[:, NL - 1:].reshape(-1, cfg.vocab),
                                     ids.gather(1, t[:, None] + predicted).reshape(-1), reduction="none")
            total = total + losses.sum()
            per_group.append(losses.detach().view(B, NA))
        return total / (B * K * NA), torch.cat(per_group).mean(0)


def decays(name, tensor):
    """dca's default_decays: matrices, except embeddings."""
    return tensor.dim() >= 2 and not any(s in name for s in ("embed", "wte", "wpe"))


def adamw(step, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    """AdamW as dca::AdamWConfig{} over the coprocessor's parameters, decayed as dca decays them.
    foreach=True is PyTorch's faster multi-tensor AdamW (the CPU default is the per-tensor loop)."""
    named = list(step.coprocessor.items())
    groups = [{"params": [t for n, t in named if decays(n, t)], "weight_decay": weight_decay},
              {"params": [t for n, t in named if not decays(n, t)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def flops(cfg, batch, seq_len, points):
    """bench_coprocessor.cpp's FLOP model of one structured step (see its header comment)."""
    d, L, q, kv = cfg.d, cfg.layers, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    mlp = cfg.mlp * (3 if cfg.arch == "llama" else 2)
    W, H, A = 2.0 * L * (d * (q + 2 * kv) + q * d + mlp * d), 2.0 * cfg.vocab * d, 4.0 * L * q
    NL, R, G = N_LATENTS, N_LATENTS + N_AHEAD - 1, points.numel()
    total = batch * seq_len * W + A * batch * seq_len * (seq_len + 1) / 2
    total += G * NL * (3 * W + 6 * d * d) + G * R * (2 * W + 2 * H)
    for t in points.flatten().tolist():
        C = t + 1
        total += A * (2 * NL * C + 3 * NL * (NL + 1) / 2) + A * (2 * R * C + 3 * R * (R + 1) / 2)
    return total


def random_points(batch, seq_len, k, generator):
    """K distinct points per sequence, uniform over 0..T−1−N_A, ascending: [B, K]."""
    return torch.stack([torch.randperm(seq_len - N_AHEAD, generator=generator)[:k].sort().values
                        for _ in range(batch)])


# ---- BLAS ------------------------------------------------------------------------------------------


# ---- timing ----------------------------------------------------------------------------------------

def run(variant, name, k, threads, steps):
    cfg, seq_len, batch, _ = PRESETS[name]
    set_threads(threads)
    generator = torch.Generator().manual_seed(1)
    decoder = init_decoder(cfg, generator)
    coprocessor = {n: t.clone() for n, t in decoder.items()}
    coprocessor["coprocessor.soft_tokens"] = torch.randn(N_LATENTS, cfg.d, generator=generator) * 0.02
    coprocessor["coprocessor.latent_projection.weight"] = torch.zeros(cfg.d, cfg.d)
    ids = torch.randint(0, cfg.vocab, (batch, seq_len), generator=generator)
    points = random_points(batch, seq_len, k, generator)
    step = CoprocessorStep(cfg, decoder, coprocessor)
    optimizer = adamw(step)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        loss = step.loss(variant, ids, points)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    median, best = statistics.median(times), min(times)
    groups = batch * k
    print(f"pytorch {variant:5s} {name} K={k} B={batch} T={seq_len} threads={threads} step median "
          f"{median * 1e3:8.2f} ms best {best * 1e3:8.2f} ms  ms/point {median * 1e3 / groups:7.3f}  "
          f"GFLOP/s {flops(cfg, batch, seq_len, points) / median * 1e-9:6.1f}  loss {loss.item():.4f}", flush=True)


# ---- the check against dca -------------------------------------------------------------------------

def read_safetensors(path):
    """{name: tensor}, metadata of a safetensors file (F32, F64, I64, I32)."""
    dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}
    with open(path, "rb") as f:
        data = f.read()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    metadata = header.pop("__metadata__", {})
    start = 8 + header_size
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in dtypes:
            raise SystemExit(f"{path}: tensor {name} has dtype {entry['dtype']}, not one this script reads")
        flat = torch.frombuffer(bytearray(data[start + begin:start + end]), dtype=dtypes[entry["dtype"]]) \
            if end > begin else torch.empty(0, dtype=dtypes[entry["dtype"]])
        tensors[name] = flat.reshape(entry["shape"]).clone()
    return tensors, metadata


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    return 1


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def check(directory, tolerance):
    with open(os.path.join(directory, "decoder", "config.json")) as f:
        cfg = ModelConfig.from_hf(json.load(f))
    decoder = read_safetensors(os.path.join(directory, "decoder", "model.safetensors"))[0]
    before = read_safetensors(os.path.join(directory, "coprocessor.safetensors"))[0]
    after = read_safetensors(os.path.join(directory, "coprocessor_after_step.safetensors"))[0]
    batch, meta = read_safetensors(os.path.join(directory, "batch.safetensors"))
    coprocessor = {n[len("model."):]: t for n, t in before.items() if n.startswith("model.")}
    ids, points = batch["ids"], batch["points"]
    dca_loss = float(batch["loss"][0])
    dca_grads = {n[len("grad."):]: t for n, t in batch.items() if n.startswith("grad.")}
    if int(meta["n_latents"]) != N_LATENTS or int(meta["n_ahead"]) != N_AHEAD:
        return fail(f"the export is for N_L = {meta['n_latents']}, N_A = {meta['n_ahead']}; "
                    f"this script computes N_L = {N_LATENTS}, N_A = {N_AHEAD}")
    B, T = ids.shape
    if meta["config"] in PRESETS:  # what the timing runs build must be what dca exported
        preset, seq_len, batch_size, ks = PRESETS[meta["config"]]
        if vars(preset) != vars(cfg) or (seq_len, batch_size) != (T, B) or \
                (meta["config"] == "reproduction" and ks != [points.shape[1]]):
            return fail(f"this script's {meta['config']!r} preset {vars(preset)}, T={seq_len}, B={batch_size}, K={ks} "
                        f"is not dca's: {vars(cfg)}, T={T}, B={B}, K={points.shape[1]}")
    print(f"check {directory}: config {meta['config']} ({cfg.arch}, d={cfg.d}, L={cfg.layers}) K={points.shape[1]} "
          f"B={B} T={T}, after {meta['train_steps']} dca training steps at lr {meta['train_lr']}")
    print(f"  dca     loss {dca_loss:.9g} (dca's dense reference: {meta['dense_loss']})")
    status = 0
    for variant in ("dense", "loop"):
        step = CoprocessorStep(cfg, decoder, coprocessor)
        loss, per_position = step.loss(variant, ids, points)
        loss.backward()
        diff = relative(loss.item(), dca_loss)
        worst, worst_name, missing = 0.0, "-", []
        for name, tensor in step.coprocessor.items():
            grad, reference = tensor.grad, dca_grads.get(name)
            if reference is None:
                if grad is not None and grad.abs().max() > 0:
                    missing.append(f"{name} (PyTorch has a gradient, dca none)")
                continue
            if grad is None:
                missing.append(f"{name} (dca has a gradient, PyTorch none)")
                continue
            error = float((grad - reference).norm() / reference.norm().clamp(min=1e-30))
            if error > worst:
                worst, worst_name = error, name
        per_position_diff = float((per_position.double() - batch["per_position"]).abs().max())
        print(f"  pytorch {variant:5s} loss {loss.item():.9g}  relative difference {diff:.2e}  "
              f"(per-position losses within {per_position_diff:.1e}; gradients: worst relative L2 difference "
              f"{worst:.2e}, {worst_name})")
        if not diff <= tolerance:
            status = fail(f"PyTorch {variant} loss {loss.item():.9g} differs from dca's {dca_loss:.9g} by "
                          f"{diff:.3e} relative (> {tolerance:g})")
        if missing:
            status = fail(f"PyTorch {variant}: gradients differ in which parameters get one: {', '.join(missing)}")
        if not worst <= GRAD_TOLERANCE:
            status = fail(f"PyTorch {variant}: the gradient of {worst_name} differs from dca's by {worst:.3e} "
                          f"relative L2 (> {GRAD_TOLERANCE:g})")

    # AdamW: PyTorch's update from dca's state and gradients must give dca's parameters.
    step = CoprocessorStep(cfg, decoder, coprocessor)
    optimizer = adamw(step, lr=float(meta["lr"]), betas=(float(meta["beta1"]), float(meta["beta2"])),
                      eps=float(meta["eps"]), weight_decay=float(meta["weight_decay"]))
    ours = sorted(n for n, t in step.coprocessor.items() if decays(n, t))
    theirs = sorted(meta["decays"].split(",")) if meta["decays"] else []
    if ours != theirs:
        status = fail(f"weight decay: PyTorch decays {ours}, dca {theirs}")
    for name, tensor in step.coprocessor.items():
        if name in dca_grads:
            tensor.grad = dca_grads[name].clone()
            optimizer.state[tensor] = {"step": before[f"optimizer.{name}.step"].reshape(()).clone(),
                                       "exp_avg": before[f"optimizer.{name}.exp_avg"].clone(),
                                       "exp_avg_sq": before[f"optimizer.{name}.exp_avg_sq"].clone()}
    optimizer.step()
    worst, worst_name, largest, moved = 0.0, "-", 0.0, 0.0
    for name, tensor in step.coprocessor.items():
        reference = after["model." + name]
        difference = (tensor.detach() - reference).abs()
        error = float((difference / (ADAMW_ATOL + ADAMW_RTOL * reference.abs())).max())
        largest = max(largest, float(difference.max()))
        moved = max(moved, float((reference - before["model." + name]).abs().max()))
        if error > worst:
            worst, worst_name = error, name
    print(f"  AdamW on dca's state and gradients: updated parameters within {largest:.1e} of dca's, "
          f"{worst:.2f} of the tolerance ({worst_name}; the step moved them by up to {moved:.1e}); "
          f"{len(ours)} decayed, as by dca")
    if not worst <= 1:
        status = fail(f"AdamW: PyTorch's update of {worst_name} differs from dca's by {worst:.3g} times the "
                      f"tolerance ({ADAMW_ATOL:g} + {ADAMW_RTOL:g}·|p|)")
    print("PASS" if status == 0 else "FAILED", flush=True)
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["small"], choices=list(PRESETS))
    parser.add_argument("--K", type=int, nargs="+", help="points per sequence (default: the config's own)")
    parser.add_argument("--variant", nargs="+", default=["dense", "loop"], choices=["dense", "loop"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--check", metavar="DIR", help="check the loss against a bench_coprocessor --dca_export DIR")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative loss tolerance of --check")
    parser.add_argument("--header", action="store_true", help="print the header line only")
    args = parser.parse_args()
    torch.ones(2, 2) @ torch.ones(2, 2)  # loads the BLAS
    print(f"# torch {torch.__version__}, BLAS {loaded_openblas() or 'not OpenBLAS'}, kernels {openblas_core() or '?'}")
    if args.header:
        return 0
    if args.check:
        set_threads(args.threads[0])
        return check(args.check, args.tolerance)
    for name in args.config:
        for k in args.K or PRESETS[name][3]:
            for threads in args.threads:
                for variant in args.variant:
                    run(variant, name, k, threads, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
