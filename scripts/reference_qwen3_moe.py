#!/usr/bin/env python3
"""Reference log-probabilities of a Qwen3 / Qwen3-MoE checkpoint, from scratch in PyTorch.

An implementation independent of our exporter, written from transformers' modeling_qwen3
and modeling_qwen3_moe semantics (float32, no KV cache: every step recomputes the whole
sequence), for test/fixtures. It needs only torch; safetensors are parsed by hand.

    python3 scripts/reference_qwen3_moe.py CHECKPOINT_DIR STEPS PROMPT_IDS_JSON > out.json
"""
import hashlib
import json
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = bytearray(data[a:b])
        if t["dtype"] == "BF16":
            # bfloat16 is the top half of a float32.
            halves = torch.frombuffer(raw, dtype=torch.int16).to(torch.int32)
            x = (halves << 16).view(torch.float32)
        else:
            x = torch.frombuffer(raw, dtype=DTYPES[t["dtype"]]).to(torch.float32)
        out[name] = x.reshape(t["shape"]).clone()
    return out


def load(dir):
    index = os.path.join(dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    w = {}
    for f in files:
        w.update(read_safetensors(os.path.join(dir, f)))
    return json.load(open(os.path.join(dir, "config.json"))), w, files


def rms_norm(x, weight, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def mlp(x, w, p):
    g = x @ w[p + ".gate_proj.weight"].T
    u = x @ w[p + ".up_proj.weight"].T
    return (torch.nn.functional.silu(g) * u) @ w[p + ".down_proj.weight"].T


def sparse_moe(x, w, p, c):
    """Qwen3MoeSparseMoeBlock.forward over x [T, H]."""
    E, k = c["num_experts"], c["num_experts_per_tok"]
    router_logits = x @ w[p + ".gate.weight"].T
    routing = torch.softmax(router_logits, dim=1, dtype=torch.float)
    routing, selected = torch.topk(routing, k, dim=-1)
    if c.get("norm_topk_prob", False):
        routing = routing / routing.sum(dim=-1, keepdim=True)
    final = torch.zeros_like(x)
    mask = torch.nn.functional.one_hot(selected, num_classes=E).permute(2, 1, 0)
    for e in range(E):
        idx, top_x = torch.where(mask[e])
        if top_x.numel() == 0:
            continue
        out = mlp(x[top_x], w, f"{p}.experts.{e}") * routing[top_x, idx, None]
        final.index_add_(0, top_x, out)
    return final


def forward(tokens, c, w):
    H, NH, KVH = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    HD = c.get("head_dim") or H // NH
    eps = c.get("rms_norm_eps", 1e-6)
    theta = c.get("rope_theta", 1e6)
    T = len(tokens)
    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    inv = 1.0 / (theta ** (torch.arange(0, HD, 2, dtype=torch.int64).float() / HD))
    freqs = torch.outer(torch.arange(T).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    causal = torch.full((T, T), float("-inf")).triu(1)
    sparse_step = c.get("decoder_sparse_step", 1)
    mlp_only = c.get("mlp_only_layers", [])
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        h = rms_norm(x, w[p + ".input_layernorm.weight"], eps)
        q = (h @ w[p + ".self_attn.q_proj.weight"].T).view(T, NH, HD)
        k = (h @ w[p + ".self_attn.k_proj.weight"].T).view(T, KVH, HD)
        v = (h @ w[p + ".self_attn.v_proj.weight"].T).view(T, KVH, HD)
        q = rms_norm(q, w[p + ".self_attn.q_norm.weight"], eps).transpose(0, 1)
        k = rms_norm(k, w[p + ".self_attn.k_norm.weight"], eps).transpose(0, 1)
        v = v.transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(NH // KVH, dim=0)
        v = v.repeat_interleave(NH // KVH, dim=0)
        scores = (q @ k.transpose(1, 2)) * HD**-0.5 + causal
        attn = torch.softmax(scores, dim=-1, dtype=torch.float32) @ v
        x = x + attn.transpose(0, 1).reshape(T, NH * HD) @ w[p + ".self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + ".post_attention_layernorm.weight"], eps)
        sparse = c.get("model_type") == "qwen3_moe" and l not in mlp_only and c["num_experts"] > 0 and (l + 1) % sparse_step == 0
        x = x + (sparse_moe(h, w, p + ".mlp", c) if sparse else mlp(h, w, p + ".mlp"))
    x = rms_norm(x[-1], w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return x @ head.T


def main():
    dir, steps, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    c, w, files = load(dir)
    cases = []
    with torch.no_grad():
        for prompt in prompts:
            seq, out = list(prompt), []
            for _ in range(steps):
                lp = torch.log_softmax(forward(seq, c, w).double(), dim=-1)
                top = torch.topk(lp, 20)
                out.append({"top_ids": top.indices.tolist(), "top_logprobs": [round(v, 6) for v in top.values.tolist()]})
                seq.append(int(top.indices[0]))
            cases.append({"prompt_ids": prompt, "greedy_ids": seq[len(prompt):], "steps": out})
    sha = {f: hashlib.sha256(open(os.path.join(dir, f), "rb").read()).hexdigest() for f in files}
    json.dump({"reference": "independent from-scratch PyTorch Qwen3-MoE (float32), greedy decoding", "weights_sha256": sha, "cases": cases}, sys.stdout, indent=1)


main()
