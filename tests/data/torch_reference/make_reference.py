#!/usr/bin/python3
"""Fully float64 reference logits, loss and gradients for the fixtures in tests/data/hf/.

The Hugging Face references (tests/data/hf/<model>/reference.safetensors) were produced by
`transformers` with the model cast to float64, but `transformers` still runs several steps in
float32 (the causal-LM loss upcasts the logits with `.float()`, Llama/Gemma-2 RMSNorm compute in
float32, rotary cos/sin are built in float32, eager attention softmax uses dtype=torch.float32),
so those numbers are only float32-accurate. This script re-implements the three architectures in
plain PyTorch (no `transformers`) with every operation in float64 and writes

    tests/data/torch_reference/<model>.safetensors

holding float64 `logits` [2, 12, V], `loss` [1] and `grad.<hf parameter name>` for every
parameter (a tied weight's gradient is stored once, under the token-embedding name).

It then prints, for every stored quantity, max |ours - HF| / max |HF| against the HF reference.

It also writes the same quantities for a batch with pad tokens in it,

    tests/data/torch_reference/<model>_padded.safetensors

(plus `input_ids` [2, 12] and `pad_token_id` [1], both int64): the HF batch with its first
sequence right-padded (last 4 tokens) and its second left-padded (first 2 tokens), with the
config's pad_token_id, or 0 where config.json has none. Llama and Gemma-2 embed tokens as
transformers does, nn.Embedding(V, d, padding_idx=pad_token_id): lookups of the pad row add no
gradient (a tied head still does); GPT-2's wte has no padding_idx, so its pad row is an ordinary
row. No attention mask is used: pads are ordinary tokens to attention and loss (labels =
input_ids); only the embedding's gradient convention differs.

Run with Debian's torch (python3-torch):  /usr/bin/python3 tests/data/torch_reference/make_reference.py
"""

import json
import math
import os
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
HF_DIR = os.path.normpath(os.path.join(HERE, "..", "hf"))
MODELS = ("gpt2", "llama", "gemma2")
F64 = torch.float64


# --------------------------------------------------------------------------------------------
# safetensors I/O (by hand: 8-byte little-endian header length, JSON header, raw LE data)
# --------------------------------------------------------------------------------------------

_DTYPES = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "I64": (torch.int64, 8)}
PAD_TOKEN_FALLBACK = 0   # the padded batch's pad id where config.json has no pad_token_id


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, size = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // size
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype, count=count)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def write_safetensors(path, tensors, metadata):
    """Write int64 tensors as I64 and everything else as F64; the JSON header is space-padded to
    a multiple of 8 bytes."""
    header = {"__metadata__": metadata}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if tensors[name].dtype == torch.int64:
            dtype, t = "I64", tensors[name].contiguous()
            raw = t.numpy().astype("<i8").tobytes()
        else:
            dtype, t = "F64", tensors[name].detach().to(F64).contiguous()
            raw = t.numpy().astype("<f8").tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in chunks:
            f.write(raw)


# --------------------------------------------------------------------------------------------
# shared building blocks (all float64)
# --------------------------------------------------------------------------------------------

def causal_mask(T, sliding_window=None):
    """allowed[i, j]: key j visible to query i iff j <= i (and i - j < window when sliding).

    transformers' sliding-window mask keeps kv_idx > q_idx - sliding_window, i.e. the query plus
    the sliding_window - 1 previous tokens.
    """
    i = torch.arange(T).unsqueeze(1)
    j = torch.arange(T).unsqueeze(0)
    allowed = j <= i
    if sliding_window is not None:
        allowed = allowed & (i - j < sliding_window)
    return allowed


def attention(q, k, v, scale, allowed, softcap=None):
    """q [B, H, T, D], k/v [B, Hkv, T, D] -> [B, T, H*D].

    Grouped-query attention as transformers' repeat_kv: kv head j is repeated H/Hkv times
    consecutively, so it serves query heads j*(H/Hkv) .. (j+1)*(H/Hkv)-1.
    Masked scores are set to -inf (transformers adds the dtype minimum; both give exactly 0
    after the softmax). The softmax runs in float64 here (transformers' eager path uses
    dtype=torch.float32 for Llama/Gemma-2).
    """
    B, H, T, D = q.shape
    rep = H // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        # Gemma-2: soft-cap the raw scores BEFORE the mask is applied
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p, v)  # [B, H, T, D]
    return o.transpose(1, 2).reshape(B, T, H * D)


def rope_cos_sin(T, head_dim, theta):
    """Default rotary embedding, angles computed in float64.

    transformers builds inv_freq = 1 / theta^(arange(0, D, 2) / D) and the cos/sin tables in
    float32; here everything is float64. Frequencies are duplicated ([f, f]) to cover the
    rotate_half layout (pairs (i, i + D/2)).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=F64) / head_dim))
    pos = torch.arange(T, dtype=F64)
    ang = torch.outer(pos, inv_freq)          # [T, D/2]
    emb = torch.cat([ang, ang], dim=-1)       # [T, D]
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x [B, H, T, D]: out[i] = x[i] cos - x[i+D/2] sin, out[i+D/2] = x[i+D/2] cos + x[i] sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)   # transformers' rotate_half
    return x * cos + rotated * sin


def rms_norm(x, w, eps, one_plus=False):
    """RMSNorm y = g * x / sqrt(mean(x^2) + eps), g = w (Llama) or 1 + w (Gemma-2).

    transformers computes this in float32 (x.float()); here it stays float64.
    """
    g = (1.0 + w) if one_plus else w
    return g * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def gelu_tanh(x):
    """The tanh GELU: GPT-2's gelu_new and Gemma-2's gelu_pytorch_tanh (same formula)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def linear(x, w):
    """nn.Linear without bias: weight stored [out, in]."""
    return torch.matmul(x, w.t())


def split_heads(x, n, d):
    """[B, T, n*d] -> [B, n, T, d]."""
    B, T, _ = x.shape
    return x.view(B, T, n, d).transpose(1, 2)


def next_token_loss(logits, ids):
    """Mean next-token cross-entropy (transformers' ForCausalLMLoss without the .float() upcast):
    position t predicts ids[t + 1]; the last position has no target; mean over B*(T-1) tokens."""
    V = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1, :].reshape(-1, V),
                                             ids[:, 1:].reshape(-1), reduction="mean")


def embed(table, ids, pad_token_id):
    """nn.Embedding(V, d, padding_idx=pad_token_id) applied to ids: the rows of the table, but
    lookups of row pad_token_id pass no gradient to it (None: an ordinary lookup)."""
    return torch.nn.functional.embedding(ids, table, padding_idx=pad_token_id)


# --------------------------------------------------------------------------------------------
# architectures (pad_token_id: the token whose embedding row lookups leave without gradient,
# for the architectures whose transformers class builds its embedding with padding_idx)
# --------------------------------------------------------------------------------------------

def gpt2_forward(cfg, p, ids, pad_token_id):
    """GPT2LMHeadModel. Conv1D weights are [in, out] (y = x @ W + b); lm_head tied to wte.
    GPT2Model's wte is nn.Embedding(V, E) without padding_idx: pad_token_id changes nothing."""
    E, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    assert cfg["activation_function"] == "gelu_new"
    assert cfg["scale_attn_weights"] and not cfg["scale_attn_by_inverse_layer_idx"]
    assert not cfg["reorder_and_upcast_attn"]
    eps = cfg["layer_norm_epsilon"]
    D = E // H
    B, T = ids.shape
    allowed = causal_mask(T)
    ln = torch.nn.functional.layer_norm  # biased variance, as nn.LayerNorm

    def conv1d(x, name):
        return torch.matmul(x, p[name + ".weight"]) + p[name + ".bias"]

    x = embed(p["transformer.wte.weight"], ids, None) + p["transformer.wpe.weight"][:T]
    for l in range(L):
        pre = f"transformer.h.{l}."
        h = ln(x, (E,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], eps)
        qkv = conv1d(h, pre + "attn.c_attn")
        q, k, v = qkv.split(E, dim=-1)     # c_attn output is q | k | v, n_embd each
        a = attention(split_heads(q, H, D), split_heads(k, H, D), split_heads(v, H, D),
                      1.0 / math.sqrt(D), allowed)
        x = x + conv1d(a, pre + "attn.c_proj")
        h = ln(x, (E,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], eps)
        x = x + conv1d(gelu_tanh(conv1d(h, pre + "mlp.c_fc")), pre + "mlp.c_proj")
    x = ln(x, (E,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    return torch.matmul(x, p["transformer.wte.weight"].t())   # tied LM head


def llama_forward(cfg, p, ids, pad_token_id):
    """LlamaForCausalLM: embedding with padding_idx = pad_token_id, RMSNorm, rotary (rotate_half),
    SwiGLU, GQA, untied lm_head."""
    E, H, Hkv, L = (cfg["hidden_size"], cfg["num_attention_heads"],
                    cfg["num_key_value_heads"], cfg["num_hidden_layers"])
    D = cfg.get("head_dim") or E // H
    eps = cfg["rms_norm_eps"]
    assert cfg["hidden_act"] == "silu"
    assert not cfg.get("attention_bias") and not cfg.get("mlp_bias")
    assert cfg["rope_parameters"]["rope_type"] == "default"
    assert not cfg["tie_word_embeddings"]
    B, T = ids.shape
    cos, sin = rope_cos_sin(T, D, cfg["rope_parameters"]["rope_theta"])
    allowed = causal_mask(T)

    x = embed(p["model.embed_tokens.weight"], ids, pad_token_id)
    for l in range(L):
        pre = f"model.layers.{l}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = apply_rope(split_heads(linear(h, p[pre + "self_attn.q_proj.weight"]), H, D), cos, sin)
        k = apply_rope(split_heads(linear(h, p[pre + "self_attn.k_proj.weight"]), Hkv, D), cos, sin)
        v = split_heads(linear(h, p[pre + "self_attn.v_proj.weight"]), Hkv, D)
        a = attention(q, k, v, D ** -0.5, allowed)   # scaling = head_dim ** -0.5
        x = x + linear(a, p[pre + "self_attn.o_proj.weight"])
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        m = torch.nn.functional.silu(linear(h, p[pre + "mlp.gate_proj.weight"])) \
            * linear(h, p[pre + "mlp.up_proj.weight"])
        x = x + linear(m, p[pre + "mlp.down_proj.weight"])
    x = rms_norm(x, p["model.norm.weight"], eps)
    return linear(x, p["lm_head.weight"])


def gemma2_forward(cfg, p, ids, pad_token_id):
    """Gemma2ForCausalLM: embedding with padding_idx = pad_token_id (its lm_head, tied, still
    sends the pad row gradient), (1 + w) RMSNorm, scaled embeddings, pre/post norms around attention
    and MLP, GeGLU (tanh GELU), rotary, GQA, attention and final logit soft-capping,
    sliding-window attention on "sliding_attention" layers, tied LM head."""
    E, H, Hkv, L = (cfg["hidden_size"], cfg["num_attention_heads"],
                    cfg["num_key_value_heads"], cfg["num_hidden_layers"])
    D = cfg["head_dim"]                       # from config, not hidden_size / heads
    eps = cfg["rms_norm_eps"]
    assert cfg["hidden_activation"] == "gelu_pytorch_tanh"
    assert not cfg.get("attention_bias")
    assert cfg["rope_parameters"]["rope_type"] == "default"
    assert cfg["tie_word_embeddings"]
    assert not cfg.get("use_bidirectional_attention")
    attn_cap = cfg["attn_logit_softcapping"]
    final_cap = cfg["final_logit_softcapping"]
    scale = cfg["query_pre_attn_scalar"] ** -0.5  # not head_dim ** -0.5
    B, T = ids.shape
    cos, sin = rope_cos_sin(T, D, cfg["rope_parameters"]["rope_theta"])
    masks = {"full_attention": causal_mask(T),
             "sliding_attention": causal_mask(T, cfg["sliding_window"])}

    def norm(x, name):
        return rms_norm(x, p[name], eps, one_plus=True)

    emb = p["model.embed_tokens.weight"]
    # transformers multiplies by torch.tensor(hidden_size ** 0.5, dtype=hidden dtype) (float64 here)
    x = embed(emb, ids, pad_token_id) * torch.tensor(E ** 0.5, dtype=F64)
    for l in range(L):
        pre = f"model.layers.{l}."
        h = norm(x, pre + "input_layernorm.weight")
        q = apply_rope(split_heads(linear(h, p[pre + "self_attn.q_proj.weight"]), H, D), cos, sin)
        k = apply_rope(split_heads(linear(h, p[pre + "self_attn.k_proj.weight"]), Hkv, D), cos, sin)
        v = split_heads(linear(h, p[pre + "self_attn.v_proj.weight"]), Hkv, D)
        a = attention(q, k, v, scale, masks[cfg["layer_types"][l]], softcap=attn_cap)
        a = linear(a, p[pre + "self_attn.o_proj.weight"])
        x = x + norm(a, pre + "post_attention_layernorm.weight")
        h = norm(x, pre + "pre_feedforward_layernorm.weight")
        m = gelu_tanh(linear(h, p[pre + "mlp.gate_proj.weight"])) \
            * linear(h, p[pre + "mlp.up_proj.weight"])
        m = linear(m, p[pre + "mlp.down_proj.weight"])
        x = x + norm(m, pre + "post_feedforward_layernorm.weight")
    x = norm(x, "model.norm.weight")
    logits = torch.matmul(x, emb.t())          # tied LM head
    return final_cap * torch.tanh(logits / final_cap)


FORWARD = {"gpt2": gpt2_forward, "llama": llama_forward, "gemma2": gemma2_forward}


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def rel(a, b):
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def evaluate(model, cfg, weights, ids, pad_token_id):
    """Logits, loss and every parameter's gradient for the batch `ids` [B, T] (int64)."""
    # float32 weights -> float64 leaves; a tied weight is a single tensor used twice, so
    # autograd sums both contributions into its gradient.
    params = {n: w.to(F64).requires_grad_(True) for n, w in weights.items()}
    logits = FORWARD[model](cfg, params, ids, pad_token_id)
    loss = next_token_loss(logits, ids)
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for n, w in params.items():
        out["grad." + n] = w.grad
    assert all(t.dtype == F64 for t in out.values())
    return out


def write(name, out):
    meta = {"generator": "tests/data/torch_reference/make_reference.py",
            "torch": torch.__version__}
    dst = os.path.join(HERE, name + ".safetensors")
    write_safetensors(dst, out, meta)
    print(f"{name}: wrote {os.path.relpath(dst, os.path.join(HERE, '..', '..', '..'))} "
          f"({os.path.getsize(dst)} bytes), loss {out['loss'].item():.17g}")


def padded_batch(ids, pad_token_id):
    """The HF batch with pad tokens: sequence 0 right-padded (last 4), sequence 1 left-padded
    (first 2)."""
    padded = ids.clone()
    padded[0, -4:] = pad_token_id
    padded[1, :2] = pad_token_id
    return padded


def run(model):
    src = os.path.join(HF_DIR, model)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    weights = read_safetensors(os.path.join(src, "model.safetensors"))
    ref = read_safetensors(os.path.join(src, "reference.safetensors"))
    ids = ref["input_ids"]

    # the fixture's batch, as transformers ran it (config.json's pad_token_id, if any)
    out = evaluate(model, cfg, weights, ids, cfg.get("pad_token_id"))
    write(model, out)

    # cross-check against the transformers reference (float32-accurate outside GPT-2's forward)
    grads = [n for n in sorted(out) if n.startswith("grad.")]
    assert sorted(n for n in ref if n.startswith("grad.")) == grads, "parameter set differs"
    worst_grad = max(rel(out[n], ref[n]) for n in grads)
    print(f"  vs HF: logits {rel(out['logits'], ref['logits']):.3e}  "
          f"loss {rel(out['loss'], ref['loss'].to(F64)):.3e}  grads (worst) {worst_grad:.3e}")
    for n in grads:
        print(f"    {n:60s} {rel(out[n], ref[n]):.3e}")

    # a batch with pad tokens in it (no transformers reference: transformers is not needed here)
    pad = cfg.get("pad_token_id")
    pad = PAD_TOKEN_FALLBACK if pad is None else pad
    padded_ids = padded_batch(ids, pad)
    padded = evaluate(model, cfg, weights, padded_ids, pad)
    padded["input_ids"] = padded_ids
    padded["pad_token_id"] = torch.tensor([pad], dtype=torch.int64)
    write(model + "_padded", padded)
    # What padding_idx changes: the pad row's gradient, against the same batch embedded without it.
    plain = evaluate(model, cfg, weights, padded_ids, None)
    table = "transformer.wte.weight" if model == "gpt2" else "model.embed_tokens.weight"
    row, plain_row = padded["grad." + table][pad], plain["grad." + table][pad]
    print(f"  padded batch, pad token {pad}: |pad-row gradient| {row.abs().max().item():.3e}, "
          f"without padding_idx {plain_row.abs().max().item():.3e}, "
          f"max |difference| / max |without| {rel(row, plain_row):.3e}; "
          f"logits identical: {torch.equal(padded['logits'], plain['logits'])}")


def main():
    torch.set_num_threads(1)   # fixed summation order: bit-reproducible output
    for model in (sys.argv[1:] or MODELS):
        run(model)


if __name__ == "__main__":
    main()
