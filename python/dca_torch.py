#!/usr/bin/python3
"""dca_torch — run a coprocessor trained with dca in plain PyTorch (no transformers).

dca (the C++ library in this repository) trains a *coprocessor* for a frozen decoder — differentiable
cache augmentation, arXiv 2412.17747 — and saves both as directories:

    decoder/       config.json + model.safetensors        dca::save_hf_decoder (Hugging Face layout)
    coprocessor/   config.json + model.safetensors        dca::save_coprocessor (docs/io.md)

This module reads them and runs augmented inference the way dca's AugmentedSession does: prefill the
prompt with the decoder, run the coprocessor once over the decoder's key/value cache and its soft
tokens to get N_L latent embeddings, feed the latents to the decoder as input embeddings right after
the last cached slot (positions by the coprocessor's policy), and decode — optionally augmenting
again every k new tokens. The numbers are dca's: in float32, latents and logits agree with dca's to
within 7e-7 of the largest value in the tests (tests/io/coprocessor_torch_test.cpp holds them to 1e-5).

    import dca_torch
    decoder = dca_torch.Decoder.from_directory("runs/pretrain/model")
    coprocessor = dca_torch.Coprocessor.from_directory("runs/coprocessor/coprocessor", decoder)
    session = dca_torch.AugmentedSession(decoder, coprocessor)
    result = session.generate(list(b"The meaning of "), max_new_tokens=40)
    print(bytes(t for t in result.tokens if t < 256).decode(errors="replace"))

or from the command line (run with Debian's torch, /usr/bin/python3):

    python/dca_torch.py runs/pretrain/model runs/coprocessor/coprocessor --text "The meaning of " \\
        --max-new-tokens 40 [--every 8] [--temperature 0.8 --top-k 40 --seed 1] [--no-augment]

Architectures: GPT-2, Llama, Qwen2 and Gemma-2 as dca builds them (the decoder config.json fields
dca reads, with its defaults; sharded checkpoints with model.safetensors.index.json; F32, F64, BF16
and F16 weights). Coprocessor choices: every latent form (residual, normed, final_hidden,
token_mixture), both latent position policies, causal or bidirectional soft tokens, the kv-cache
and last-layer inputs, pause tokens, LoRA adapters. A gated coprocessor's latents and gate are
computed (Coprocessor.read); like dca's session, generation refuses it, because the mixture with
the frozen decoder is defined by its training objective only for single insertions.

Conventions, as in dca: one sequence at a time, rows are tokens ([n, d] tensors); attention is causal
by slot order, never by position, so latents sharing one position id still attend causally among
themselves; a sliding window hides keys whose position lies `window` or more before the query's;
rotary angles are computed in double precision and rounded to the model's dtype.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "FormatError", "read_safetensors", "write_safetensors", "DecoderConfig", "parameter_shapes", "Decoder", "KVCache",
    "CoprocessorConfig", "Coprocessor", "CoprocessorOutput", "AugmentedSession", "Generation", "main",
]

COPROCESSOR_FORMAT_VERSION = 1  # dca::coprocessor_format_version: the newest format this module reads


class FormatError(ValueError):
    """A directory or file that is not what dca writes; the message names the file and the field or tensor."""


# ---- safetensors -------------------------------------------------------------------------------------
# By hand (8-byte little-endian header length, JSON header, raw little-endian data): the safetensors
# package is not part of Debian's torch.

_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Every tensor of a safetensors file (in its stored dtype) and the header's metadata."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise FormatError(f"{path}: {len(data)} bytes, too short for a safetensors file")
    (header_size,) = struct.unpack("<Q", data[:8])
    if 8 + header_size > len(data):
        raise FormatError(f"{path}: header of {header_size} bytes runs past the end of the file")
    try:
        header = json.loads(data[8:8 + header_size])
    except ValueError as e:
        raise FormatError(f"{path}: the header is not valid JSON: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + header_size
    tensors = {}
    for name, entry in header.items():
        if entry.get("dtype") not in _DTYPES:
            raise FormatError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}, not one of {sorted(_DTYPES)}")
        dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        raw = bytearray(data[start + begin:start + end])
        if dtype == torch.bfloat16:  # frombuffer has no bfloat16 in every torch: read the bits, then view
            flat = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16) if raw else torch.empty(0, dtype=dtype)
        else:
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        shape = list(entry["shape"])
        if flat.numel() != math.prod(shape):
            raise FormatError(f"{path}: tensor {name!r} holds {flat.numel()} values for shape {shape}")
        tensors[name] = flat.reshape(shape)
    return tensors, metadata


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes tensors (F32, F64, F16, BF16, I64, I32) in name order, the header padded to 8 bytes."""
    header: Dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except ValueError as e:
        raise FormatError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path}: not a JSON object")
    return value


def _read_weights(directory: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """A model directory's tensors: model.safetensors, or the shards model.safetensors.index.json lists."""
    single = os.path.join(directory, "model.safetensors")
    index = single + ".index.json"
    if os.path.exists(single) or not os.path.exists(index):
        return read_safetensors(single)[0], single
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index}: no \"weight_map\" object")
    tensors: Dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_tensors = read_safetensors(os.path.join(directory, shard))[0]
        for name, tensor in shard_tensors.items():
            if weight_map.get(name) != shard:
                raise FormatError(f"{index}: tensor {name!r} is in {shard} but the index puts it in {weight_map.get(name)}")
            tensors[name] = tensor
    for name, shard in weight_map.items():
        if name not in tensors:
            raise FormatError(f"{index}: tensor {name!r} is not in {shard}")
    return tensors, index


# ---- the decoder's configuration ---------------------------------------------------------------------

def _field(j: dict, name: str, kind, file: str, default=None, required=False):
    """config.json field `name` as `kind` (None or absent: `default`); FormatError naming it otherwise."""
    value = j.get(name)
    if value is None:
        if required:
            raise FormatError(f"{file}: required field '{name}' is missing")
        return default
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, int) and not isinstance(value, bool) if kind is int else
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else isinstance(value, kind))
    if not ok:
        raise FormatError(f"{file}: field '{name}' has the wrong type ({type(value).__name__})")
    return float(value) if kind is float else value


_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "gelu": "gelu_erf", "silu": "silu", "swish": "silu", "relu": "relu"}


def _activation(name: str, file: str) -> str:
    if name not in _ACTIVATIONS:
        raise FormatError(f"{file}: activation '{name}' is not supported ({', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _rope_theta(j: dict, file: str) -> float:
    for nested in ("rope_parameters", "rope_scaling"):  # transformers >= 5 nests it; older files have rope_theta
        r = j.get(nested)
        if r is None:
            continue
        kind = r.get("rope_type", r.get("type", "default"))
        if kind != "default":
            raise FormatError(f"{file}: rope type '{kind}' is not supported (only default rotary embeddings)")
        if "rope_theta" in r:
            return float(r["rope_theta"])
    return _field(j, "rope_theta", float, file, 10000.0)


@dataclass(frozen=True)
class DecoderConfig:
    """What a decoder computes, as dca's DecoderConfig: read from a Hugging Face config.json exactly as
    dca's hf_config_from_json reads it (same fields, same defaults)."""
    architecture: str        # gpt2, llama, qwen2, gemma2
    vocab_size: int
    hidden_size: int         # d
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int            # resolved: hidden_size / n_heads unless given
    intermediate_size: int
    max_positions: int
    norm: str                # layer_norm, rms_norm, rms_norm_one_plus (Gemma-2's (1 + w))
    norm_eps: float
    activation: str          # gelu_tanh, gelu_erf, silu, relu
    gated_mlp: bool
    rotary: bool             # False: learned positions (GPT-2)
    rope_theta: float
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    query_scale: float       # attention scale
    attention_softcap: float  # 0: off
    final_softcap: float     # 0: off
    sliding_window: int      # 0: off
    sliding_layers: Tuple[bool, ...]
    post_norms: bool         # Gemma-2's norms after attention and MLP
    tie_embeddings: bool
    scale_embeddings: bool   # Gemma-2: input embeddings × √d

    def layer_window(self, layer: int) -> int:
        """The sliding window of `layer`, or 0."""
        return self.sliding_window if self.sliding_window > 0 and self.sliding_layers[layer] else 0

    @staticmethod
    def from_hf(j: dict, file: str = "config.json") -> "DecoderConfig":
        model_type = _field(j, "model_type", str, file, required=True)
        if model_type == "gpt2":
            d = _field(j, "n_embd", int, file, required=True)
            heads = _field(j, "n_head", int, file, required=True)
            layers = _field(j, "n_layer", int, file, required=True)
            if not _field(j, "scale_attn_weights", bool, file, True) or \
                    _field(j, "scale_attn_by_inverse_layer_idx", bool, file, False) or \
                    _field(j, "reorder_and_upcast_attn", bool, file, False):
                raise FormatError(f"{file}: GPT-2 attention-scaling variants are not supported")
            config = DecoderConfig(
                "gpt2", _field(j, "vocab_size", int, file, required=True), d, layers, heads, heads, d // heads,
                _field(j, "n_inner", int, file, 4 * d), _field(j, "n_positions", int, file, required=True),
                "layer_norm", _field(j, "layer_norm_epsilon", float, file, 1e-5),
                _activation(_field(j, "activation_function", str, file, "gelu_new"), file), False, False, 10000.0,
                True, True, True, 1.0 / math.sqrt(d // heads), 0.0, 0.0, 0, (False,) * layers, False,
                _field(j, "tie_word_embeddings", bool, file, True), False)
        elif model_type in ("llama", "qwen2", "gemma2"):
            d = _field(j, "hidden_size", int, file, required=True)
            heads = _field(j, "num_attention_heads", int, file, required=True)
            layers = _field(j, "num_hidden_layers", int, file, required=True)
            head_dim = _field(j, "head_dim", int, file, 0) or d // heads
            gemma = model_type == "gemma2"
            attention_bias = _field(j, "attention_bias", bool, file, False)
            if gemma:
                activation = _field(j, "hidden_activation", str, file) or _field(j, "hidden_act", str, file, "gelu_pytorch_tanh")
                window = _field(j, "sliding_window", int, file, 0)
                types = j.get("layer_types")
                if types is not None:
                    if len(types) != layers:
                        raise FormatError(f"{file}: layer_types has {len(types)} entries for {layers} layers")
                    sliding = tuple(t == "sliding_attention" for t in types)
                else:
                    sliding = tuple(l % 2 == 0 for l in range(layers))
                scale = 1.0 / math.sqrt(_field(j, "query_pre_attn_scalar", float, file, required=True))
                qkv_bias, out_bias = attention_bias, attention_bias
            else:
                activation = _field(j, "hidden_act", str, file, "silu")
                window, sliding, scale = 0, (False,) * layers, 1.0 / math.sqrt(head_dim)
                if model_type == "qwen2":
                    if _field(j, "use_sliding_window", bool, file, False):
                        raise FormatError(f"{file}: Qwen2 sliding-window attention is not supported")
                    qkv_bias, out_bias = True, False
                else:
                    qkv_bias, out_bias = attention_bias, attention_bias
            config = DecoderConfig(
                model_type, _field(j, "vocab_size", int, file, required=True), d, layers, heads,
                _field(j, "num_key_value_heads", int, file, heads), head_dim,
                _field(j, "intermediate_size", int, file, required=True),
                _field(j, "max_position_embeddings", int, file, 2048),
                "rms_norm_one_plus" if gemma else "rms_norm", _field(j, "rms_norm_eps", float, file, 1e-6),
                _activation(activation, file), True, True, _rope_theta(j, file), qkv_bias, out_bias,
                _field(j, "mlp_bias", bool, file, False), scale,
                _field(j, "attn_logit_softcapping", float, file, 0.0) if gemma else 0.0,
                _field(j, "final_logit_softcapping", float, file, 0.0) if gemma else 0.0,
                window, sliding, gemma, _field(j, "tie_word_embeddings", bool, file, gemma), gemma)
        else:
            raise FormatError(f"{file}: model_type '{model_type}' is not supported (gpt2, llama, qwen2, gemma2)")
        if config.n_heads % config.n_kv_heads:
            raise FormatError(f"{file}: num_key_value_heads {config.n_kv_heads} does not divide {config.n_heads} heads")
        return config

    def differences(self, other: "DecoderConfig") -> List[str]:
        """'field: mine vs other' for every field in which the two differ."""
        return [f"{f.name} = {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


# Hugging Face names, as dca's nn/names.hpp: (token embedding, position embedding, final norm, layer prefix,
# attention norm, MLP norm, post-attention norm, post-MLP norm)
_NAMES_OF = {
    "gpt2": dict(embed="transformer.wte.weight", positions="transformer.wpe.weight", final_norm="transformer.ln_f",
                 layers="transformer.h", attn_norm="ln_1", mlp_norm="ln_2", attention="attn", mlp="mlp"),
    "llama": dict(embed="model.embed_tokens.weight", final_norm="model.norm", layers="model.layers",
                  attn_norm="input_layernorm", mlp_norm="post_attention_layernorm", attention="self_attn", mlp="mlp"),
    "gemma2": dict(embed="model.embed_tokens.weight", final_norm="model.norm", layers="model.layers",
                   attn_norm="input_layernorm", mlp_norm="pre_feedforward_layernorm",
                   post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                   attention="self_attn", mlp="mlp"),
}
_NAMES_OF["qwen2"] = _NAMES_OF["llama"]
_HEAD = "lm_head.weight"


def _linears(config: DecoderConfig, layer: int) -> List[Tuple[str, int, int, bool]]:
    """Layer `layer`'s projections: (name prefix, in, out, bias), as dca's SelfAttention and Mlp build them."""
    n = _NAMES_OF[config.architecture]
    prefix = f"{n['layers']}.{layer}"
    d, q, kv, width = (config.hidden_size, config.n_heads * config.head_dim,
                       config.n_kv_heads * config.head_dim, config.intermediate_size)
    a, m = f"{prefix}.{n['attention']}", f"{prefix}.{n['mlp']}"
    if config.architecture == "gpt2":
        return [(f"{a}.c_attn", d, 3 * d, config.qkv_bias), (f"{a}.c_proj", q, d, config.out_bias),
                (f"{m}.c_fc", d, width, config.mlp_bias), (f"{m}.c_proj", width, d, config.mlp_bias)]
    return [(f"{a}.q_proj", d, q, config.qkv_bias), (f"{a}.k_proj", d, kv, config.qkv_bias),
            (f"{a}.v_proj", d, kv, config.qkv_bias), (f"{a}.o_proj", q, d, config.out_bias),
            (f"{m}.gate_proj", d, width, config.mlp_bias), (f"{m}.up_proj", d, width, config.mlp_bias),
            (f"{m}.down_proj", width, d, config.mlp_bias)]


def parameter_shapes(config: DecoderConfig, lora_rank: int = 0) -> Dict[str, Tuple[int, ...]]:
    """Every parameter of a dca decoder of this configuration (with LoRA adapters of rank `lora_rank`
    on every projection, PEFT's names), by its Hugging Face name: what its model.safetensors holds."""
    n, d = _NAMES_OF[config.architecture], config.hidden_size
    shapes: Dict[str, Tuple[int, ...]] = {n["embed"]: (config.vocab_size, d)}
    if not config.rotary:
        shapes[n["positions"]] = (config.max_positions, d)

    def norm(name):
        shapes[name + ".weight"] = (d,)
        if config.norm == "layer_norm":
            shapes[name + ".bias"] = (d,)

    for l in range(config.n_layers):
        prefix = f"{n['layers']}.{l}."
        norms = ["attn_norm", "mlp_norm"] + (["post_attn_norm", "post_mlp_norm"] if config.post_norms else [])
        for key in norms:
            norm(prefix + n[key])
        for name, fan_in, fan_out, bias in _linears(config, l):
            conv1d = config.architecture == "gpt2"  # GPT-2's Conv1D stores [in, out]
            shapes[name + ".weight"] = (fan_in, fan_out) if conv1d else (fan_out, fan_in)
            if bias:
                shapes[name + ".bias"] = (fan_out,)
            if lora_rank > 0:
                shapes[name + ".lora_A.weight"] = (lora_rank, fan_in)
                shapes[name + ".lora_B.weight"] = (fan_out, lora_rank)
    norm(n["final_norm"])
    if not config.tie_embeddings:
        shapes[_HEAD] = (config.vocab_size, d)
    return shapes


def _check_tensors(tensors: Dict[str, torch.Tensor], expected: Dict[str, Tuple[int, ...]], file: str,
                   allowed_extra: Sequence[str] = ()) -> None:
    """FormatError naming every missing, misshaped and unexpected tensor."""
    missing = [f"'{name}' {list(shape)}" for name, shape in expected.items() if name not in tensors]
    misshaped = [f"'{name}' is {list(tensors[name].shape)} but should be {list(shape)}"
                 for name, shape in expected.items() if name in tensors and tuple(tensors[name].shape) != shape]
    extra = [f"'{name}'" for name in tensors if name not in expected and name not in allowed_extra]
    problems = [f"{what} {', '.join(items)}" for what, items in
                (("missing", missing), ("misshaped", misshaped), ("unexpected", extra)) if items]
    if problems:
        raise FormatError(f"{file}: the tensors do not match the configuration: {'; '.join(problems)}")


# ---- the decoder ---------------------------------------------------------------------------------------

@dataclass
class ForwardOutput:
    """What Decoder.forward returns for its n rows."""
    residual: torch.Tensor          # [n, d] the residual stream after the last block
    hidden: torch.Tensor            # [n, d] after the final norm
    keys: List[torch.Tensor]        # per layer [Hkv, n, D], after rotary: what a cache stores
    values: List[torch.Tensor]      # per layer [Hkv, n, D]


class KVCache:
    """A decoder's key/value cache, as dca's KVCache: per layer the keys [Hkv, S, D] (after rotary) and
    values of S slots, each slot's position id and kind ("token", "latent"), and the position the next
    appended token takes. Slot index and position differ once latents are inserted."""

    def __init__(self, config: DecoderConfig, dtype: torch.dtype):
        empty = torch.empty(config.n_kv_heads, 0, config.head_dim, dtype=dtype)
        self.keys = [empty] * config.n_layers
        self.values = [empty] * config.n_layers
        self.positions = torch.empty(0, dtype=torch.int64)
        self.kinds: List[str] = []
        self.next_position = 0

    def __len__(self) -> int:
        return self.positions.numel()

    def add(self, out: ForwardOutput, positions: torch.Tensor, kind: str) -> None:
        """Appends the slots of a forward pass's rows."""
        self.keys = [torch.cat((k, new), dim=1) for k, new in zip(self.keys, out.keys)]
        self.values = [torch.cat((v, new), dim=1) for v, new in zip(self.values, out.values)]
        self.positions = torch.cat((self.positions, positions))
        self.kinds += [kind] * positions.numel()


class Decoder:
    """A dca decoder (GPT-2, Llama, Qwen2, Gemma-2) as a function of its named parameters. Also the
    coprocessor's transformer, which has the decoder's architecture and may carry LoRA adapters."""

    def __init__(self, config: DecoderConfig, parameters: Dict[str, torch.Tensor], lora_scale: float = 0.0):
        self.config = config
        self.p = parameters
        self.lora_scale = lora_scale  # α/r of the LoRA adapters, if any
        self.names = _NAMES_OF[config.architecture]
        self.dtype = parameters[self.names["embed"]].dtype

    @staticmethod
    def from_directory(directory: str, dtype: torch.dtype = torch.float32) -> "Decoder":
        """A decoder directory as dca's save_hf_decoder writes it; every tensor checked, a stored copy of a
        tied head ignored (as dca's load_hf_weights does)."""
        config_file = os.path.join(directory, "config.json")
        config = DecoderConfig.from_hf(_read_json(config_file), config_file)
        tensors, file = _read_weights(directory)
        expected = parameter_shapes(config)
        _check_tensors(tensors, expected, file, allowed_extra=[_HEAD] if config.tie_embeddings else [])
        return Decoder(config, {name: tensors[name].to(dtype) for name in expected})

    # -- pieces ------------------------------------------------------------------------------------------

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """ids [n] -> [n, d]: rows of the token table, before Gemma-2's √d scale (what `forward` takes)."""
        return self.p[self.names["embed"]][torch.as_tensor(list(ids), dtype=torch.int64)]

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, d] -> logits [n, V]: the (tied or untied) output head and the final soft-cap."""
        weight = self.p[self.names["embed"] if self.config.tie_embeddings else _HEAD]
        logits = F.linear(hidden, weight)
        cap = self.config.final_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x·Wᵀ + b (GPT-2's Conv1D: x·W + b), plus a LoRA adapter's (α/r)·x·Aᵀ·Bᵀ when there is one."""
        weight, bias = self.p[name + ".weight"], self.p.get(name + ".bias")
        if self.config.architecture == "gpt2":
            y = torch.matmul(x, weight) if bias is None else torch.addmm(bias, x, weight)
        else:
            y = F.linear(x, weight, bias)
        lora_a = self.p.get(name + ".lora_A.weight")
        if lora_a is not None:
            y = y + F.linear(F.linear(x, lora_a), self.p[name + ".lora_B.weight"]) * self.lora_scale
        return y

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self.p[name + ".weight"]
        if self.config.norm == "layer_norm":
            return F.layer_norm(x, (x.shape[-1],), w, self.p[name + ".bias"], self.config.norm_eps)
        gain = 1 + w if self.config.norm == "rms_norm_one_plus" else w
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.norm_eps) * gain

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.config.activation
        if kind == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        if kind == "gelu_erf":
            return F.gelu(x)
        return F.silu(x) if kind == "silu" else F.relu(x)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of x [heads, n, D] at positions [n], rotate-half layout: pairs (i, i + D/2).
        Angles in double, rounded to the model's dtype, as dca's default."""
        D = self.config.head_dim
        inv_freq = 1.0 / torch.pow(torch.tensor(self.config.rope_theta, dtype=torch.float64),
                                   torch.arange(D // 2, dtype=torch.float64) * 2 / D)
        angles = positions.to(torch.float64)[:, None] * inv_freq  # [n, D/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        a, b = x[..., :D // 2], x[..., D // 2:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    def _attend(self, layer: int, q, k, v, visible) -> torch.Tensor:
        """q [H, n, D], k/v [Hkv, S + n, D], visible [n, S + n] -> [n, H·D]."""
        c = self.config
        if c.n_kv_heads != c.n_heads:  # query head h reads key/value head h / (H / Hkv)
            k = k.repeat_interleave(c.n_heads // c.n_kv_heads, dim=0)
            v = v.repeat_interleave(c.n_heads // c.n_kv_heads, dim=0)
        scores = torch.matmul(q, k.transpose(1, 2)) * c.query_scale
        if c.attention_softcap > 0:
            scores = c.attention_softcap * torch.tanh(scores / c.attention_softcap)
        scores = scores.masked_fill(~visible, float("-inf"))
        attended = torch.matmul(torch.softmax(scores, dim=-1), v)  # [H, n, D]
        return attended.transpose(0, 1).reshape(q.shape[1], c.n_heads * c.head_dim)

    # -- the forward pass --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: Optional[KVCache] = None,
                bidirectional: bool = False) -> ForwardOutput:
        """The decoder over input embeddings x [n, d] (Hugging Face inputs_embeds: Gemma-2's √d scale is
        applied here) at `positions` [n], after the slots of `cache` (not changed). Each row sees every
        cached slot and, among the rows, those before it (all of them if `bidirectional`); on a
        sliding-window layer only keys whose position is within `window` of the query's."""
        c, n = self.config, x.shape[0]
        if not c.rotary and positions.numel() and int(positions.max()) >= c.max_positions:
            raise ValueError(f"position {int(positions.max())} exceeds the {c.max_positions} learned positions of this model")
        S = len(cache) if cache is not None else 0
        key_positions = torch.cat((cache.positions, positions)) if S else positions
        own = torch.ones(n, n, dtype=torch.bool)
        visible = torch.cat((torch.ones(n, S, dtype=torch.bool), own if bidirectional else own.tril()), dim=1)
        if c.scale_embeddings:
            x = x * torch.tensor(math.sqrt(c.hidden_size), dtype=x.dtype)
        if not c.rotary:
            x = x + self.p[self.names["positions"]][positions]
        H, Hkv, D = c.n_heads, c.n_kv_heads, c.head_dim
        out_keys, out_values = [], []
        for l in range(c.n_layers):
            prefix = f"{self.names['layers']}.{l}."
            linears = [name for name, *_ in _linears(c, l)]
            h = self._norm(x, prefix + self.names["attn_norm"])
            if c.architecture == "gpt2":
                q, k, v = self._linear(h, linears[0]).split(c.hidden_size, dim=1)
            else:
                q, k, v = (self._linear(h, name) for name in linears[:3])
            q = q.reshape(n, H, D).transpose(0, 1)
            k = k.reshape(n, Hkv, D).transpose(0, 1)
            v = v.reshape(n, Hkv, D).transpose(0, 1)
            if c.rotary:
                q, k = self._rotate(q, positions), self._rotate(k, positions)
            out_keys.append(k)
            out_values.append(v)
            if S:
                k = torch.cat((cache.keys[l], k), dim=1)
                v = torch.cat((cache.values[l], v), dim=1)
            window = c.layer_window(l)
            seen = visible & (positions[:, None] - key_positions[None, :] < window) if window else visible
            a = self._linear(self._attend(l, q, k, v, seen), linears[1] if c.architecture == "gpt2" else linears[3])
            if c.post_norms:
                a = self._norm(a, prefix + self.names["post_attn_norm"])
            x = x + a
            h = self._norm(x, prefix + self.names["mlp_norm"])
            if c.architecture == "gpt2":
                m = self._linear(self._activate(self._linear(h, linears[2])), linears[3])
            else:
                m = self._linear(self._activate(self._linear(h, linears[4])) * self._linear(h, linears[5]), linears[6])
            if c.post_norms:
                m = self._norm(m, prefix + self.names["post_mlp_norm"])
            x = x + m
        return ForwardOutput(x, self._norm(x, self.names["final_norm"]), out_keys, out_values)

    def append_tokens(self, cache: KVCache, ids: Sequence[int]) -> torch.Tensor:
        """Runs `ids` after the cached slots, appends their slots (positions next_position..), returns
        their logits [n, V]."""
        positions = cache.next_position + torch.arange(len(ids))
        out = self.forward(self.embed(ids), positions, cache)
        cache.add(out, positions, "token")
        cache.next_position += len(ids)
        return self.head(out.hidden)

    def insert_latents(self, cache: KVCache, z: torch.Tensor, policy: str = "at_insertion_point") -> torch.Tensor:
        """Reads latents z [N_L, d] as input embeddings after the last slot and appends them as latent
        slots; returns the decoder's logits at them [N_L, V] (the last row predicts the next token).
        "at_insertion_point": every latent takes the last slot's position and the next token keeps its
        own; "shifted": the latents take the next positions and the tokens after them move on by N_L."""
        if len(cache) == 0:
            raise ValueError("insert_latents: the cache is empty")
        n = z.shape[0]
        if policy == "shifted":
            positions = cache.next_position + torch.arange(n)
        elif policy == "at_insertion_point":
            positions = cache.positions[-1].repeat(n)
        else:
            raise ValueError(f"insert_latents: position policy {policy!r} is not at_insertion_point or shifted")
        out = self.forward(z, positions, cache)
        cache.add(out, positions, "latent")
        if policy == "shifted":
            cache.next_position += n
        return self.head(out.hidden)


# ---- the coprocessor -----------------------------------------------------------------------------------

_LATENT_FORMS = ("residual", "normed", "final_hidden", "token_mixture")


@dataclass(frozen=True)
class CoprocessorConfig:
    """config.json's "coprocessor" object (docs/io.md), as dca's CoprocessorConfig."""
    n_latents: int                    # N_L
    latent_form: str                  # residual, normed, final_hidden, token_mixture
    latent_positions: str             # at_insertion_point, shifted
    soft_token_rule: str              # causal, bidirectional
    input: str                        # kv_cache, last_layer
    source: str                       # coprocessor, pause
    gated: bool
    lora_rank: int                    # 0: full fine-tuning
    lora_alpha: float                 # LoRA scale α/r; 0: α = r
    n_ahead: int = 16                 # training only, from here on
    oracle_lookahead: int = 0
    init_from_decoder: bool = True
    soft_token_std: float = 0.02
    seed: int = 0
    format_version: int = COPROCESSOR_FORMAT_VERSION

    @staticmethod
    def from_json(j, file: str) -> "CoprocessorConfig":
        if not isinstance(j, dict):
            raise FormatError(f'{file}: "coprocessor" is not a JSON object')
        version = _field(j, "format_version", int, file, required=True)
        if not 1 <= version <= COPROCESSOR_FORMAT_VERSION:
            raise FormatError(f"{file}: coprocessor format_version {version} is not one this module reads "
                              f"(1..{COPROCESSOR_FORMAT_VERSION})")
        known = {f.name: f for f in fields(CoprocessorConfig)}
        for key in j:
            if key not in known:
                raise FormatError(f"{file}: unknown coprocessor field '{key}'")
        kinds = {"int": int, "str": str, "bool": bool, "float": float}
        values = {name: _field(j, name, kinds[f.type], file, required=True) for name, f in known.items()}
        config = CoprocessorConfig(**values)
        choices = {"latent_form": _LATENT_FORMS, "latent_positions": ("at_insertion_point", "shifted"),
                   "soft_token_rule": ("causal", "bidirectional"), "input": ("kv_cache", "last_layer"),
                   "source": ("coprocessor", "pause")}
        for name, allowed in choices.items():
            if getattr(config, name) not in allowed:
                raise FormatError(f"{file}: coprocessor field '{name}' is '{getattr(config, name)}', "
                                  f"not one of {', '.join(allowed)}")
        if config.n_latents < 1 or config.lora_rank < 0:
            raise FormatError(f"{file}: n_latents must be ≥ 1 and lora_rank ≥ 0, got {config.n_latents} and "
                              f"{config.lora_rank}")
        return config

    @property
    def lora_scale(self) -> float:
        return (self.lora_alpha if self.lora_alpha > 0 else float(self.lora_rank)) / self.lora_rank \
            if self.lora_rank > 0 else 0.0


@dataclass
class CoprocessorOutput:
    """One insertion's latents and, for a gated coprocessor, its gate."""
    latents: torch.Tensor                 # z [N_L, d]
    gate: Optional[torch.Tensor] = None   # g [] in (0, 1): the augmented prediction's weight in the mixture


class Coprocessor:
    """A coprocessor directory (dca::save_coprocessor) for a given decoder."""

    def __init__(self, config: CoprocessorConfig, model: Optional[Decoder], tensors: Dict[str, torch.Tensor]):
        self.config = config
        self.model = model  # None for pause tokens
        self.soft_tokens = tensors["coprocessor.soft_tokens"]                      # [N_L, d]
        self.projection = tensors.get("coprocessor.latent_projection.weight")     # [d, d]
        self.gate_weight = tensors.get("coprocessor.gate.weight")                 # [1, d]
        self.gate_bias = tensors.get("coprocessor.gate.bias")                     # [1, 1]

    @staticmethod
    def from_directory(directory: str, decoder: Decoder) -> "Coprocessor":
        """Reads and checks a coprocessor directory: FormatError naming config.json and every differing
        field when it was trained with a decoder of another configuration, or naming model.safetensors
        and every missing, misshaped or unexpected tensor."""
        config_file = os.path.join(directory, "config.json")
        j = _read_json(config_file)
        if "coprocessor" not in j:
            raise FormatError(f'{config_file}: no "coprocessor" object; this is not a coprocessor directory')
        config = CoprocessorConfig.from_json(j.pop("coprocessor"), config_file)
        trained_with = DecoderConfig.from_hf(j, config_file)
        differences = trained_with.differences(decoder.config)
        if differences:
            raise FormatError(f"{config_file}: the coprocessor was trained with another decoder than the one it is "
                              f"loaded with (here vs the decoder's): {'; '.join(differences)}")
        file = os.path.join(directory, "model.safetensors")
        tensors = read_safetensors(file)[0]
        d = decoder.config.hidden_size
        expected: Dict[str, Tuple[int, ...]] = {}
        if config.source == "coprocessor":
            expected.update(parameter_shapes(decoder.config, config.lora_rank))
            if config.latent_form in ("residual", "token_mixture"):
                expected["coprocessor.latent_projection.weight"] = (d, d)
            if config.gated:
                expected.update({"coprocessor.gate.weight": (1, d), "coprocessor.gate.bias": (1, 1)})
        expected["coprocessor.soft_tokens"] = (config.n_latents, d)
        _check_tensors(tensors, expected, file)
        tensors = {name: tensors[name].to(decoder.dtype) for name in expected}
        model = None
        if config.source == "coprocessor":
            model = Decoder(decoder.config, {n: t for n, t in tensors.items() if not n.startswith("coprocessor.")},
                            config.lora_scale)
        return Coprocessor(config, model, tensors)

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    def read(self, decoder: Decoder, cache: KVCache, insertion_token: int,
             tokens: Optional[Sequence[int]] = None) -> CoprocessorOutput:
        """The latents for one insertion after the last slot of `cache`, which holds `insertion_token`.
        The last-layer input reads the decoder's activations over `tokens` (the tokens in the cache, in
        order; a cache keeps no activations) instead of the cache."""
        c = self.config
        if c.oracle_lookahead > 0:
            raise ValueError(f"an oracle coprocessor (oracle_lookahead = {c.oracle_lookahead}) reads tokens past the "
                             "insertion point, which inference does not have")
        if len(cache) == 0:
            raise ValueError("the cache is empty")
        if c.source == "pause":
            return CoprocessorOutput(self.soft_tokens)
        if c.input == "kv_cache":
            point = int(cache.positions[-1])
            out = self.model.forward(self.soft_tokens, point + 1 + torch.arange(self.n_latents), cache,
                                     bidirectional=c.soft_token_rule == "bidirectional")
            h_all = out.residual if c.latent_form == "final_hidden" else out.hidden
        else:
            if not tokens:
                raise ValueError("a last-layer coprocessor reads the decoder's activations over the tokens: pass them")
            h_all = self._read_last_layer(decoder, list(tokens))
        h = h_all
        if c.latent_form in ("residual", "token_mixture"):
            correction = F.linear(h, self.projection)
            if c.latent_form == "residual":  # the insertion token's embedding + a learnt correction
                z = decoder.embed([insertion_token]) + correction
            else:  # the coprocessor's next-token distribution over the decoder's table + a correction
                z = torch.matmul(torch.softmax(self.model.head(h), dim=-1), decoder.p[decoder.names["embed"]]) + correction
        else:
            z = h
        gate = None
        if c.gated:
            gate = torch.sigmoid(F.linear(h[-1:], self.gate_weight) + self.gate_bias.reshape(-1)).reshape(())
        return CoprocessorOutput(z, gate)

    def _read_last_layer(self, decoder: Decoder, tokens: List[int]) -> torch.Tensor:
        """The last-layer ablation: the decoder's last-layer residual stream over the tokens (divided by
        √d where the model scales its inputs, which undoes the scale the coprocessor applies) followed by
        the soft tokens, one causal sequence; the output at the soft tokens [N_L, d]."""
        n, d = len(tokens), decoder.config.hidden_size
        activations = decoder.forward(decoder.embed(tokens), torch.arange(n)).residual
        if decoder.config.scale_embeddings:
            activations = activations * torch.tensor(1.0 / math.sqrt(d), dtype=activations.dtype)
        positions = torch.cat((torch.arange(n), n + torch.arange(self.n_latents)))
        out = self.model.forward(torch.cat((activations, self.soft_tokens)), positions)
        h = out.residual if self.config.latent_form == "final_hidden" else out.hidden
        return h[n:]


# ---- augmented inference -------------------------------------------------------------------------------

@dataclass
class Generation:
    """What AugmentedSession.generate returns."""
    tokens: List[int]                                   # the new tokens
    logits: List[torch.Tensor] = field(default_factory=list)   # [V] the logits each new token was chosen from
    latents: List[torch.Tensor] = field(default_factory=list)  # [N_L, d] of each insertion
    insertions: List[int] = field(default_factory=list)       # new tokens before each insertion
    reason: str = "max_tokens"                          # max_tokens, stop_token, positions_full


class AugmentedSession:
    """dca's AugmentedSession, synchronous: prefill a prompt, insert a coprocessor's latents after it
    (and every `every` new tokens), decode. Without a coprocessor it is the plain decoder."""

    def __init__(self, decoder: Decoder, coprocessor: Optional[Coprocessor] = None):
        self.decoder = decoder
        self.coprocessor = coprocessor
        self.cache = KVCache(decoder.config, decoder.dtype)
        self.tokens: List[int] = []  # the prompt and every new token, in cache order

    def prefill(self, prompt: Sequence[int]) -> torch.Tensor:
        """A fresh cache holding `prompt`; returns the logits of its last token [V]."""
        if not prompt:
            raise ValueError("the prompt is empty")
        self.cache = KVCache(self.decoder.config, self.decoder.dtype)
        self.tokens = list(prompt)
        return self.decoder.append_tokens(self.cache, self.tokens)[-1]

    def append(self, token: int) -> torch.Tensor:
        """Feeds one token; returns the next token's logits [V]."""
        self.tokens.append(token)
        return self.decoder.append_tokens(self.cache, [token])[-1]

    def augment(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inserts the coprocessor's latents after the last slot: returns the latents [N_L, d] and the
        next token's logits [V], read at the last latent."""
        if self.coprocessor is None:
            raise ValueError("the session has no coprocessor")
        out = self.coprocessor.read(self.decoder, self.cache, self.tokens[-1], self.tokens)
        if out.gate is not None:
            raise ValueError("a gated coprocessor predicts a mixture with the frozen decoder, which augmented "
                             "decoding does not compute (as in dca); read its latents and gate with Coprocessor.read")
        logits = self.decoder.insert_latents(self.cache, out.latents, self.coprocessor.config.latent_positions)
        return out.latents, logits[-1]

    def generate(self, prompt: Sequence[int], max_new_tokens: int = 64, every: int = 0, augment: bool = True,
                 temperature: float = 0.0, top_k: int = 0, seed: int = 0, stop_tokens: Sequence[int] = (),
                 forced: Optional[Sequence[int]] = None) -> Generation:
        """Prefills `prompt`, augments after it (unless `augment` is false or there is no coprocessor) and
        after every `every` new tokens, and produces up to `max_new_tokens` tokens: the argmax at
        temperature 0 (ties to the lowest id), else a draw from softmax(logits / temperature) over the
        top_k most likely (0: all). `forced` tokens, if given, are fed instead of chosen (scoring a
        continuation); the logits are recorded either way."""
        augmenting = augment and self.coprocessor is not None
        result = Generation([])
        logits = self.prefill(prompt)
        if augmenting:
            z, logits = self.augment()
            result.latents.append(z)
            result.insertions.append(0)
        generator = torch.Generator().manual_seed(seed)
        count = len(forced) if forced is not None else max_new_tokens
        limit = self.decoder.config.max_positions if not self.decoder.config.rotary else None
        while len(result.tokens) < count:
            result.logits.append(logits)
            token = forced[len(result.tokens)] if forced is not None else _choose(logits, temperature, top_k, generator)
            result.tokens.append(token)
            generated = len(result.tokens)
            if token in stop_tokens:
                result.reason = "stop_token"
                break
            if generated == count:
                break
            if limit is not None and self.cache.next_position >= limit:
                result.reason = "positions_full"
                break
            logits = self.append(token)
            if augmenting and every > 0 and generated % every == 0:
                z, logits = self.augment()
                result.latents.append(z)
                result.insertions.append(generated)
        return result


def _choose(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    scaled = logits.double() / temperature
    if 0 < top_k < scaled.numel():
        threshold = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))


# ---- command line --------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Augmented generation with a dca decoder and coprocessor, in plain PyTorch.",
        epilog="--text is read as bytes (token i < 256 is byte i, as dca's ByteTokenizer); a decoder with a "
               "SentencePiece tokenizer.model takes its prompt as --ids. --dump writes the logits each new token was chosen from ('logits' [n, V]), "
               "the new tokens ('tokens'), each insertion's latents ('latents.<k>') and when it happened "
               "('insertions', new tokens before it) to a safetensors file.")
    parser.add_argument("decoder", help="decoder directory (config.json + model.safetensors)")
    parser.add_argument("coprocessor", nargs="?", help="coprocessor directory (dca::save_coprocessor); none: plain decoder")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--text", help="prompt as UTF-8 bytes (byte-level models)")
    prompt.add_argument("--ids", type=int, nargs="+", help="prompt as token ids")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--force", type=int, nargs="+", metavar="ID",
                        help="feed these new tokens instead of choosing them (scores a continuation)")
    parser.add_argument("--every", type=int, default=0, help="augment again after every k new tokens (0: only after the prompt)")
    parser.add_argument("--no-augment", action="store_true", help="do not insert latents (the plain decoder)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", type=int, nargs="*", default=[], metavar="ID", help="stop after one of these tokens")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", metavar="FILE", help="write logits, tokens and latents to a safetensors file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        decoder = Decoder.from_directory(args.decoder, getattr(torch, args.dtype))
        coprocessor = Coprocessor.from_directory(args.coprocessor, decoder) if args.coprocessor else None
        byte_level = not os.path.exists(os.path.join(args.decoder, "tokenizer.model"))
        if args.text is not None and not byte_level:
            raise ValueError(f"{args.decoder} has a SentencePiece tokenizer (tokenizer.model); this module reads "
                             "--text as bytes, so pass the prompt's token ids with --ids")
        ids = list(args.text.encode()) if args.text is not None else args.ids
        if not ids:
            raise ValueError("the prompt is empty")
        for token in ids + list(args.force or []):
            if not 0 <= token < decoder.config.vocab_size:
                raise ValueError(f"token {token} is outside the vocabulary of {decoder.config.vocab_size}")
        session = AugmentedSession(decoder, coprocessor)
        with torch.no_grad():
            result = session.generate(ids, args.max_new_tokens, args.every, not args.no_augment, args.temperature,
                                      args.top_k, args.seed, args.stop, args.force)
    except (FormatError, ValueError, OSError) as e:
        print(f"dca_torch: {e}", file=sys.stderr)
        return 1
    if coprocessor is not None and not args.no_augment:
        c = coprocessor.config
        print(f"# {len(result.insertions)} insertion(s) of {c.n_latents} {c.latent_form} latents "
              f"({c.latent_positions}) after {result.insertions} new tokens", file=sys.stderr)
    print(" ".join(map(str, result.tokens)))
    if byte_level and decoder.config.vocab_size >= 256:
        print(bytes(t for t in result.tokens if t < 256).decode("utf-8", errors="replace"))
    if args.dump:
        V = decoder.config.vocab_size
        tensors = {"logits": torch.stack(result.logits) if result.logits else torch.empty(0, V, dtype=decoder.dtype),
                   "tokens": torch.tensor(result.tokens, dtype=torch.int64),
                   "insertions": torch.tensor(result.insertions, dtype=torch.int64)}
        tensors.update({f"latents.{k}": z for k, z in enumerate(result.latents)})
        write_safetensors(args.dump, tensors, {"generator": "python/dca_torch.py", "torch": torch.__version__,
                                               "reason": result.reason})
    return 0


if __name__ == "__main__":
    sys.exit(main())
