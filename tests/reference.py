"""A float64 numpy forward pass of Mixtral and Qwen3-MoE (Hugging Face semantics,
MODELS.md), reading a safetensors folder. It is the reference moe-run's logits are
checked against.

usage: reference.py FOLDER TOKENS(comma-separated) OUT.npy [--dequant PACK]
  --dequant PACK: use the pack's dequantized weights instead of the folder's (the
  reference for q8/q4 packs: what is left is the kernels' own error)"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moepack_ref  # noqa: E402


def load_safetensors(folder):
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    out = {}
    for f in files:
        raw = open(os.path.join(folder, f), "rb").read()
        n = struct.unpack_from("<Q", raw)[0]
        hdr = json.loads(raw[8:8 + n])
        for name, t in hdr.items():
            if name == "__metadata__":
                continue
            b, e = t["data_offsets"]
            data = raw[8 + n + b:8 + n + e]
            if t["dtype"] == "F32":
                a = np.frombuffer(data, np.float32).astype(np.float64)
            elif t["dtype"] == "F16":
                a = np.frombuffer(data, np.float16).astype(np.float64)
            elif t["dtype"] == "BF16":
                a = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            else:
                raise ValueError(t["dtype"])
            out[name] = a.reshape(t["shape"])
    return out


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta):
    """x [..., hd] at positions pos [n]; rotate-half pairing"""
    hd = x.shape[-1]
    half = hd // 2
    inv = theta ** (-2.0 * np.arange(half) / hd)
    ang = pos[:, None] * inv[None, :]  # [n, half]
    c, s = np.cos(ang), np.sin(ang)
    while c.ndim < x.ndim:
        c, s = c[:, None, :], s[:, None, :]
    x0, x1 = x[..., :half], x[..., half:]
    return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)


def forward(cfg, W, tokens):
    arch = cfg["model_type"]
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or H // nh
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    K = cfg["num_experts_per_tok"]
    E = cfg["num_local_experts"] if arch == "mixtral" else cfg["num_experts"]
    norm_topk = True if arch == "mixtral" else cfg.get("norm_topk_prob", False)
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    x = W["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(L):
        p = "model.layers.%d." % l
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd)
        if arch == "qwen3_moe":
            q = rmsnorm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        k = np.repeat(k, nh // nkv, axis=1)
        v = np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        att = np.einsum("hij,jhd->ihd", s, v).reshape(n, nh * hd)
        x = x + att @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        step = cfg.get("decoder_sparse_step", 1) or 1
        if arch == "qwen3_moe" and (l in cfg.get("mlp_only_layers", []) or (l + 1) % step != 0):
            g = h @ W[p + "mlp.gate_proj.weight"].T
            x = x + (g / (1 + np.exp(-g)) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
            continue
        gate = W[p + ("block_sparse_moe.gate.weight" if arch == "mixtral" else "mlp.gate.weight")]
        lg = h @ gate.T
        pr = np.exp(lg - lg.max(axis=-1, keepdims=True))
        pr /= pr.sum(axis=-1, keepdims=True)
        out = np.zeros_like(x)
        for t in range(n):
            top = np.argsort(-pr[t], kind="stable")[:K]
            wt = pr[t, top]
            if norm_topk:
                wt = wt / wt.sum()
            for e, w in zip(top, wt):
                if arch == "mixtral":
                    q_ = p + "block_sparse_moe.experts.%d." % e
                    w1, w3, w2 = W[q_ + "w1.weight"], W[q_ + "w3.weight"], W[q_ + "w2.weight"]
                else:
                    q_ = p + "mlp.experts.%d." % e
                    w1, w3, w2 = W[q_ + "gate_proj.weight"], W[q_ + "up_proj.weight"], W[q_ + "down_proj.weight"]
                g = w1 @ h[t]
                out[t] += w * (w2 @ (g / (1 + np.exp(-g)) * (w3 @ h[t])))
        x = x + out
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


def dequantized(folder, pack_path):
    """The folder's weights replaced by the pack's dequantized ones (same names)."""
    W = load_safetensors(folder)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    p = moepack_ref.Pack(pack_path)
    mix = cfg["model_type"] == "mixtral"
    canon = {"token_embd": "model.embed_tokens.weight", "output": "lm_head.weight", "output_norm": "model.norm.weight"}
    per = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
           "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
           "ffn_gate_inp": "block_sparse_moe.gate" if mix else "mlp.gate"}
    for name in p.tensors:
        if name in canon:
            hf = canon[name]
        else:
            _, l, what = name.split(".", 2)
            hf = "model.layers.%s.%s.weight" % (l, per[what])
        W[hf] = p.tensor(name)
    for (l, e) in p.experts:
        names = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")
        base = ("model.layers.%d.block_sparse_moe.experts.%d." if mix else "model.layers.%d.mlp.experts.%d.") % (l, e)
        for m, nm in enumerate(names):
            W[base + nm + ".weight"] = p.expert(l, e, m)
    return cfg, W


if __name__ == "__main__":
    folder, toks, out = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], sys.argv[3]
    if len(sys.argv) > 5 and sys.argv[4] == "--dequant":
        cfg, W = dequantized(folder, sys.argv[5])
    else:
        cfg, W = json.load(open(os.path.join(folder, "config.json"))), load_safetensors(folder)
    np.save(out, forward(cfg, W, np.array(toks)))
