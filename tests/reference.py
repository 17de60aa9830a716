"""A float64 numpy forward pass of Mixtral, Qwen3-MoE, DeepSeek-V3, GLM-4.5, gpt-oss and Qwen3-Next (the
semantics of Hugging Face transformers' modeling code), reading a safetensors folder. It is the reference moe-run's
logits are checked against. DeepSeek-V3's attention is computed naively (k_nope and
v decompressed for every position, as modeling_deepseek.py does); --absorbed
computes it in the absorbed form moe-run uses, to check the two are the same math.

usage: reference.py FOLDER TOKENS(comma-separated) OUT.npy [--dequant PACK] [--absorbed]
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
            elif t["dtype"] == "U8":
                a = np.frombuffer(data, np.uint8)
            else:
                raise ValueError(t["dtype"])
            out[name] = a.reshape(t["shape"])
    for name in [n for n in out if n.endswith("_blocks")]:  # gpt-oss's MXFP4 experts
        out[name[:-7]] = mxfp4_unpack(out.pop(name), out.pop(name[:-7] + "_scales"))
    return out


# transformers' integrations/mxfp4.py: the FP4 E2M1 values by code
FP4 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])


def mxfp4_unpack(blocks, scales):
    """convert_moe_packed_tensors: byte j of a block holds weights 2j (low nibble) and
    2j + 1, scaled by 2^(scale - 127); [E, out, in/32, 16] -> [E, in, out]"""
    v = np.empty(blocks.shape[:-1] + (32,))
    v[..., 0::2], v[..., 1::2] = FP4[blocks & 15], FP4[blocks >> 4]
    v = np.ldexp(v, scales.astype(np.int64)[..., None] - 127)
    return v.reshape(blocks.shape[0], blocks.shape[1], -1).transpose(0, 2, 1)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta, rot=None):
    """x [..., hd] at positions pos [n]; rotate-half pairing on the first rot values
    (modeling_glm4_moe.py's apply_rotary_pos_emb: the rest pass through)"""
    hd = rot or x.shape[-1]
    if hd < x.shape[-1]:
        return np.concatenate([rope(x[..., :hd], pos, theta), x[..., hd:]], axis=-1)
    half = hd // 2
    inv = theta ** (-2.0 * np.arange(half) / hd)
    ang = pos[:, None] * inv[None, :]  # [n, half]
    c, s = np.cos(ang), np.sin(ang)
    while c.ndim < x.ndim:
        c, s = c[:, None, :], s[:, None, :]
    x0, x1 = x[..., :half], x[..., half:]
    return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)


def yarn(cfg, rope_dim):
    """DeepSeek-V3's YaRN: inverse frequencies, the cos/sin magnitude and the softmax
    scale factor (modeling_deepseek.py: DeepseekV3YarnRotaryEmbedding, softmax_scale)"""
    import math
    rs = cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", 10000.0)
    extra = 1.0 / theta ** (np.arange(0, rope_dim, 2) / rope_dim)
    factor = rs.get("factor", 1.0)
    if not rs or factor <= 1:
        return extra, 1.0, 1.0
    mscale = lambda m: 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0
    cdim = lambda rot: rope_dim * math.log(rs["original_max_position_embeddings"] / (rot * 2 * math.pi)) / (2 * math.log(theta))
    low = max(math.floor(cdim(rs["beta_fast"])), 0)
    high = min(math.ceil(cdim(rs["beta_slow"])), rope_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(rope_dim // 2) - low) / (high - low), 0, 1)
    inv_mask = 1.0 - ramp
    inv = extra / factor * (1 - inv_mask) + extra * inv_mask
    cs = mscale(rs.get("mscale", 1)) / mscale(rs.get("mscale_all_dim", 0))
    sm = mscale(rs["mscale_all_dim"]) ** 2 if rs.get("mscale_all_dim") else 1.0
    return inv, cs, sm


def rope_deepseek(x, pos, inv, cs):
    """modeling_deepseek.py's apply_rotary_pos_emb: de-interleave the pairs, then rotate-half"""
    d = x.shape[-1]
    x = x.reshape(*x.shape[:-1], d // 2, 2).swapaxes(-1, -2).reshape(x.shape)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang) * cs, np.sin(ang) * cs
    c, s = np.concatenate([c, c], -1), np.concatenate([s, s], -1)
    while c.ndim < x.ndim:
        c, s = c[:, None, :], s[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * c + rot * s


def route_deepseek(cfg, logits, bias):
    """sigmoid scores; the bias only for choosing; groups scored by their two best; the top
    topk_group groups; the top K experts in them; weights = unbiased scores, normalized,
    scaled (modeling_deepseek.py MoEGate, noaux_tc; masked experts can never be chosen)"""
    E, K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    G, TG = cfg.get("n_group", 1), cfg.get("topk_group", 1)
    sc = 1 / (1 + np.exp(-logits))
    choice = sc + (bias if bias is not None else 0)
    per = E // G
    gs = np.sort(choice.reshape(G, per), axis=-1)[:, ::-1][:, :2].sum(-1) if per > 1 else choice.reshape(G, per)[:, 0]
    keep = np.argsort(-gs, kind="stable")[:TG]
    masked = np.full(E, -np.inf)
    for g in keep:
        masked[g * per:(g + 1) * per] = choice[g * per:(g + 1) * per]
    top = np.argsort(-masked, kind="stable")[:K]
    wt = sc[top]
    if cfg.get("norm_topk_prob", True):
        wt = wt / (wt.sum() + 1e-20)
    return top, wt * cfg.get("routed_scaling_factor", 1.0)


def forward_deepseek(cfg, W, tokens, absorbed=False):
    H, L, nh = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    eps = cfg["rms_norm_eps"]
    nope, rope_d, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    kvl = cfg["kv_lora_rank"]
    inv, cs, sm = yarn(cfg, rope_d)
    scale = sm / np.sqrt(nope + rope_d)
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    x = W["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    silu = lambda g: g / (1 + np.exp(-g))
    for l in range(L):
        p = "model.layers.%d." % l
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        if cfg.get("q_lora_rank"):
            qa = rmsnorm(h @ W[p + "self_attn.q_a_proj.weight"].T, W[p + "self_attn.q_a_layernorm.weight"], eps)
            q = qa @ W[p + "self_attn.q_b_proj.weight"].T
        else:
            q = h @ W[p + "self_attn.q_proj.weight"].T
        q = q.reshape(n, nh, nope + rope_d)
        q_nope, q_pe = q[..., :nope], rope_deepseek(q[..., nope:], pos, inv, cs)
        kva = h @ W[p + "self_attn.kv_a_proj_with_mqa.weight"].T
        c = rmsnorm(kva[:, :kvl], W[p + "self_attn.kv_a_layernorm.weight"], eps)
        k_pe = rope_deepseek(kva[:, None, kvl:], pos, inv, cs)[:, 0]  # shared by the heads
        kvb = W[p + "self_attn.kv_b_proj.weight"].reshape(nh, nope + vd, kvl)
        if absorbed:
            q_abs = np.einsum("ihd,hdc->ihc", q_nope, kvb[:, :nope])
            s = np.einsum("ihc,jc->hij", q_abs, c) + np.einsum("ihd,jd->hij", q_pe, k_pe)
        else:
            kv = np.einsum("hec,jc->jhe", kvb, c)
            k_nope, v = kv[..., :nope], kv[..., nope:]
            s = np.einsum("ihd,jhd->hij", q_nope, k_nope) + np.einsum("ihd,jd->hij", q_pe, k_pe)
        s = s * scale + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        if absorbed:
            att = np.einsum("hdc,ihc->ihd", kvb[:, nope:], np.einsum("hij,jc->ihc", s, c))
        else:
            att = np.einsum("hij,jhd->ihd", s, v)
        x = x + att.reshape(n, nh * vd) @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        if l < cfg.get("first_k_dense_replace", 0):
            g = h @ W[p + "mlp.gate_proj.weight"].T
            x = x + (silu(g) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
            continue
        lg = h @ W[p + "mlp.gate.weight"].T
        bias = W.get(p + "mlp.gate.e_score_correction_bias")
        out = np.zeros_like(x)
        for t in range(n):
            top, wt = route_deepseek(cfg, lg[t], bias)
            for e, w in zip(top, wt):
                q_ = p + "mlp.experts.%d." % e
                g = W[q_ + "gate_proj.weight"] @ h[t]
                out[t] += w * (W[q_ + "down_proj.weight"] @ (silu(g) * (W[q_ + "up_proj.weight"] @ h[t])))
        if cfg.get("n_shared_experts"):
            q_ = p + "mlp.shared_experts."
            g = h @ W[q_ + "gate_proj.weight"].T
            out += (silu(g) * (h @ W[q_ + "up_proj.weight"].T)) @ W[q_ + "down_proj.weight"].T
        x = x + out
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


def yarn_hf(cfg, dim):
    """transformers' _compute_yarn_parameters: inverse frequencies and the cos/sin factor"""
    import math
    rs, base = cfg["rope_scaling"], cfg.get("rope_theta", 10000.0)
    factor = rs["factor"]
    orig = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
    fast, slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
    cdim = lambda rot: dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
    low, high = cdim(fast), cdim(slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    extra = 1.0 / base ** (np.arange(0, dim, 2) / dim)
    inv = extra / factor * ramp + extra * (1 - ramp)
    return inv, 0.1 * math.log(factor) + 1.0


def forward_gpt_oss(cfg, W, tokens):
    """modeling_gpt_oss.py: attention with biases, sinks and sliding windows on the layers
    layer_types says; YaRN rotate-half RoPE; router top-k of logits then softmax; experts
    fused ([E, H, 2I], gate even and up odd columns) with biases and the clamped SwiGLU"""
    H, L, nh, nkv = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, K, lim = cfg["head_dim"], cfg["rms_norm_eps"], cfg["num_experts_per_tok"], cfg.get("swiglu_limit", 7.0)
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    inv, msc = yarn_hf(cfg, hd)
    ang = pos[:, None] * inv[None, :]
    c, sn = (np.cos(ang) * msc)[:, None, :], (np.sin(ang) * msc)[:, None, :]
    rot = lambda x: np.concatenate([x[..., :hd // 2] * c - x[..., hd // 2:] * sn,
                                    x[..., hd // 2:] * c + x[..., :hd // 2] * sn], axis=-1)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    x = W["model.embed_tokens.weight"][tokens]
    for l in range(L):
        p, a = "model.layers.%d." % l, "model.layers.%d.self_attn." % l
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        proj = lambda m, heads: (h @ W[a + m + "_proj.weight"].T + W[a + m + "_proj.bias"]).reshape(n, heads, hd)
        q, k, v = rot(proj("q", nh)), rot(proj("k", nkv)), proj("v", nkv)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        seen = j <= i
        if cfg["layer_types"][l] == "sliding_attention":
            seen &= j > i - cfg["sliding_window"]
        s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd) + np.where(seen, 0, -np.inf)
        s = np.concatenate([s, np.broadcast_to(W[a + "sinks"][:, None, None], (nh, n, 1))], axis=-1)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = (s / s.sum(axis=-1, keepdims=True))[..., :-1]  # the sink's share dropped
        att = np.einsum("hij,jhd->ihd", s, v).reshape(n, nh * hd)
        x = x + att @ W[a + "o_proj.weight"].T + W[a + "o_proj.bias"]
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        lg = h @ W[p + "mlp.router.weight"].T + W[p + "mlp.router.bias"]
        e_ = p + "mlp.experts."
        out = np.zeros_like(x)
        for t in range(n):
            top = np.argsort(-lg[t], kind="stable")[:K]
            wt = np.exp(lg[t, top] - lg[t, top].max())
            wt /= wt.sum()
            for e, w in zip(top, wt):
                gu = h[t] @ W[e_ + "gate_up_proj"][e] + W[e_ + "gate_up_proj_bias"][e]
                g, u = np.minimum(gu[::2], lim), np.clip(gu[1::2], -lim, lim)
                act = g / (1 + np.exp(-1.702 * g)) * (u + 1)
                out[t] += w * (act @ W[e_ + "down_proj"][e] + W[e_ + "down_proj_bias"][e])
        x = x + out
    x = rmsnorm(x, W["model.norm.weight"], eps)
    return x @ W["lm_head.weight"].T


def forward_qwen3_next(cfg, W, tokens):
    """modeling_qwen3_next.py (and Qwen3.5-MoE's, the same model): zero-centered RMSNorms (1 + w);
    Gated DeltaNet layers step by step (torch_recurrent_gated_delta_rule): in_proj_qkvz per key
    head [q, k, its value heads' v and z], a causal depthwise conv with SiLU over q|k|v, q and k
    L2-normed and repeated over each key head's value heads, the state decayed by
    exp(-exp(A_log) softplus(a + dt_bias)) and corrected by beta = sigmoid(b) of the delta,
    read with q / sqrt(dk), RMS-normed and gated by SiLU(z); attention layers with the output
    gate (q_proj per head [query, gate]), q/k norms, partial rotate-half RoPE; softmax top-k
    experts renormalized, plus the shared expert times sigmoid(shared_expert_gate)"""
    H, L, nh, nkv, hd = (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                         cfg["num_key_value_heads"], cfg["head_dim"])
    eps, theta, K = cfg["rms_norm_eps"], cfg.get("rope_theta", 1e7), cfg["num_experts_per_tok"]
    rot = int(hd * cfg.get("partial_rotary_factor", 0.25))
    nk, nv, dk, dv = (cfg["linear_num_key_heads"], cfg["linear_num_value_heads"], cfg["linear_key_head_dim"],
                      cfg["linear_value_head_dim"])
    r, taps = nv // nk, cfg["linear_conv_kernel_dim"]
    silu = lambda g: g / (1 + np.exp(-g))
    sigmoid = lambda g: 1 / (1 + np.exp(-g))
    l2 = lambda v: v / np.sqrt((v * v).sum(axis=-1, keepdims=True) + 1e-6)
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = W["model.embed_tokens.weight"][tokens]
    for l in range(L):
        p = "model.layers.%d." % l
        h = rmsnorm(x, 1 + W[p + "input_layernorm.weight"], eps)
        if cfg["layer_types"][l] == "linear_attention":
            a = p + "linear_attn."
            qkvz = (h @ W[a + "in_proj_qkvz.weight"].T).reshape(n, nk, -1)
            q, k = qkvz[..., :dk], qkvz[..., dk:2 * dk]
            v, z = qkvz[..., 2 * dk:2 * dk + r * dv], qkvz[..., 2 * dk + r * dv:].reshape(n, nv, dv)
            ba = (h @ W[a + "in_proj_ba.weight"].T).reshape(n, nk, 2 * r)
            b, a_ = ba[..., :r].reshape(n, nv), ba[..., r:].reshape(n, nv)
            mixed = np.concatenate([q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1)], axis=-1)
            wc = W[a + "conv1d.weight"][:, 0, :]  # [channels, taps]; the last tap on the token itself
            padded = np.concatenate([np.zeros((taps - 1, mixed.shape[1])), mixed])
            conv = silu(sum(wc[:, j] * padded[j:j + n] for j in range(taps)))
            q = conv[:, :nk * dk].reshape(n, nk, dk)
            k = conv[:, nk * dk:2 * nk * dk].reshape(n, nk, dk)
            v = conv[:, 2 * nk * dk:].reshape(n, nv, dv)
            q, k = np.repeat(l2(q), r, axis=1) / np.sqrt(dk), np.repeat(l2(k), r, axis=1)
            beta = sigmoid(b)
            sp = np.log1p(np.exp(a_ + W[a + "dt_bias"]))
            decay = np.exp(-np.exp(W[a + "A_log"]) * sp)  # [n, nv]
            S = np.zeros((nv, dk, dv))
            o = np.zeros((n, nv, dv))
            for t in range(n):
                S = S * decay[t][:, None, None]
                recall = np.einsum("hkv,hk->hv", S, k[t])
                S = S + np.einsum("hk,hv->hkv", k[t], (v[t] - recall) * beta[t][:, None])
                o[t] = np.einsum("hkv,hk->hv", S, q[t])
            o = rmsnorm(o, W[a + "norm.weight"], eps) * silu(z)
            x = x + o.reshape(n, nv * dv) @ W[a + "out_proj.weight"].T
        else:
            a = p + "self_attn."
            qg = (h @ W[a + "q_proj.weight"].T).reshape(n, nh, 2 * hd)
            q, gate = qg[..., :hd], qg[..., hd:].reshape(n, nh * hd)
            q = rope(rmsnorm(q, 1 + W[a + "q_norm.weight"], eps), pos, theta, rot)
            k = rope(rmsnorm((h @ W[a + "k_proj.weight"].T).reshape(n, nkv, hd), 1 + W[a + "k_norm.weight"], eps),
                     pos, theta, rot)
            v = (h @ W[a + "v_proj.weight"].T).reshape(n, nkv, hd)
            k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
            s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            att = np.einsum("hij,jhd->ihd", s, v).reshape(n, nh * hd) * sigmoid(gate)
            x = x + att @ W[a + "o_proj.weight"].T
        h = rmsnorm(x, 1 + W[p + "post_attention_layernorm.weight"], eps)
        lg = h @ W[p + "mlp.gate.weight"].T
        pr = np.exp(lg - lg.max(axis=-1, keepdims=True))
        pr /= pr.sum(axis=-1, keepdims=True)
        out = np.zeros_like(x)
        for t in range(n):
            top = np.argsort(-pr[t], kind="stable")[:K]
            wt = pr[t, top] / pr[t, top].sum() if cfg.get("norm_topk_prob", True) else pr[t, top]
            for e, w in zip(top, wt):
                q_ = p + "mlp.experts.%d." % e
                g = W[q_ + "gate_proj.weight"] @ h[t]
                out[t] += w * (W[q_ + "down_proj.weight"] @ (silu(g) * (W[q_ + "up_proj.weight"] @ h[t])))
        sh = p + "mlp.shared_expert."
        g = h @ W[sh + "gate_proj.weight"].T
        shared = (silu(g) * (h @ W[sh + "up_proj.weight"].T)) @ W[sh + "down_proj.weight"].T
        x = x + out + sigmoid(h @ W[p + "mlp.shared_expert_gate.weight"].T) * shared
    x = rmsnorm(x, 1 + W["model.norm.weight"], eps)
    return x @ W["lm_head.weight"].T


def dequantized_qwen3_next(cfg, W, p):
    """Qwen3-Next's Hugging Face tensors made of the pack's: norms back to zero-centered, A to
    A_log, q|k|v, z, beta and alpha folded back into in_proj_qkvz and in_proj_ba"""
    nk, nv, dk, dv = (cfg["linear_num_key_heads"], cfg["linear_num_value_heads"], cfg["linear_key_head_dim"],
                      cfg["linear_value_head_dim"])
    r = nv // nk
    tiled = p.meta.get("hparams.linear_value_tiled", 0)

    def grouped(x, per, axis=0):  # llama.cpp's qwen35moe value-head order back to Hugging Face's
        if not tiled:
            return x
        x = np.moveaxis(x, axis, 0)
        x = x.reshape(r, nk, per, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape)
        return np.moveaxis(x, 0, axis)

    attn = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj"}
    lin = {}
    for name in p.tensors:
        t = p.tensor(name)
        if name.endswith(("attn_gate", "ssm_conv1d", "attn_qkv")) and tiled:  # the value part of each
            kd = 0 if name.endswith("attn_gate") else 2 * nk * dk
            t = np.concatenate([t[:kd], grouped(t[kd:], dv)])
        elif name.endswith(("ssm_beta", "ssm_alpha", "ssm_a", "ssm_dt.bias")):
            t = grouped(t, 1)
        elif name.endswith("ssm_out"):
            t = grouped(t, dv, axis=1)
        if name in ("token_embd", "output", "output_norm"):
            W[{"token_embd": "model.embed_tokens.weight", "output": "lm_head.weight",
               "output_norm": "model.norm.weight"}[name]] = t - (name == "output_norm")
            continue
        _, l, what = name.split(".", 2)
        q = "model.layers.%s." % l
        if what in attn:
            W[q + "self_attn.%s.weight" % attn[what]] = t
        elif what in ("attn_q_norm", "attn_k_norm"):
            W[q + "self_attn.%s.weight" % what[5:]] = t - 1
        elif what in ("attn_norm", "ffn_norm"):
            W[q + ("input_layernorm" if what == "attn_norm" else "post_attention_layernorm") + ".weight"] = t - 1
        elif what == "ffn_gate_inp":
            W[q + "mlp.gate.weight"] = t
        elif what == "ffn_gate_inp_shexp":
            W[q + "mlp.shared_expert_gate.weight"] = t[None, :]
        elif what.endswith("_shexp"):
            W[q + "mlp.shared_expert.%s_proj.weight" % what[4:-6]] = t
        elif what == "ssm_a":
            W[q + "linear_attn.A_log"] = np.log(-t)
        elif what == "ssm_dt.bias":
            W[q + "linear_attn.dt_bias"] = t
        elif what == "ssm_conv1d":
            W[q + "linear_attn.conv1d.weight"] = t[:, None, :]
        elif what == "ssm_norm":
            W[q + "linear_attn.norm.weight"] = t
        elif what == "ssm_out":
            W[q + "linear_attn.out_proj.weight"] = t
        else:  # attn_qkv, attn_gate, ssm_beta, ssm_alpha: refolded below
            lin[(int(l), what)] = t
    for l in sorted({l for l, _ in lin}):
        qkv, z = lin[(l, "attn_qkv")], lin[(l, "attn_gate")].reshape(nk, r * dv, -1)
        q, k, v = (qkv[:nk * dk].reshape(nk, dk, -1), qkv[nk * dk:2 * nk * dk].reshape(nk, dk, -1),
                   qkv[2 * nk * dk:].reshape(nk, r * dv, -1))
        a = "model.layers.%d.linear_attn." % l
        W[a + "in_proj_qkvz.weight"] = np.concatenate([q, k, v, z], axis=1).reshape(-1, qkv.shape[1])
        W[a + "in_proj_ba.weight"] = np.concatenate([lin[(l, "ssm_beta")].reshape(nk, r, -1),
                                                     lin[(l, "ssm_alpha")].reshape(nk, r, -1)], axis=1).reshape(2 * nv, -1)
    for (l, e) in p.experts:
        base = "model.layers.%d.mlp.experts.%d." % (l, e)
        for m, nm in enumerate(("gate_proj", "up_proj", "down_proj")):
            W[base + nm + ".weight"] = p.expert(l, e, m)
    return W


def forward(cfg, W, tokens, absorbed=False):
    arch = cfg["model_type"]
    if arch == "qwen3_next":
        return forward_qwen3_next(cfg, W, tokens)
    if arch == "deepseek_v3":
        return forward_deepseek(cfg, W, tokens, absorbed)
    if arch == "gpt_oss":
        return forward_gpt_oss(cfg, W, tokens)
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or H // nh
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    glm = arch == "glm4_moe"
    rot = int(hd * cfg.get("partial_rotary_factor", 0.5)) if glm else hd
    K = cfg["num_experts_per_tok"]
    E = {"mixtral": "num_local_experts", "glm4_moe": "n_routed_experts"}.get(arch, "num_experts")
    E = cfg[E]
    norm_topk = True if arch == "mixtral" else cfg.get("norm_topk_prob", False)
    silu = lambda g: g / (1 + np.exp(-g))
    bias = lambda name: W.get(name, 0) if glm and cfg.get("attention_bias") else 0
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    x = W["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(L):
        p = "model.layers.%d." % l
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        a = p + "self_attn."
        q = (h @ W[a + "q_proj.weight"].T + bias(a + "q_proj.bias")).reshape(n, nh, hd)
        k = (h @ W[a + "k_proj.weight"].T + bias(a + "k_proj.bias")).reshape(n, nkv, hd)
        v = (h @ W[a + "v_proj.weight"].T + bias(a + "v_proj.bias")).reshape(n, nkv, hd)
        if arch == "qwen3_moe" or (glm and cfg.get("use_qk_norm")):
            q = rmsnorm(q, W[a + "q_norm.weight"], eps)
            k = rmsnorm(k, W[a + "k_norm.weight"], eps)
        q, k = rope(q, pos, theta, rot), rope(k, pos, theta, rot)
        k = np.repeat(k, nh // nkv, axis=1)
        v = np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        att = np.einsum("hij,jhd->ihd", s, v).reshape(n, nh * hd)
        x = x + att @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        step = cfg.get("decoder_sparse_step", 1) or 1
        if (arch == "qwen3_moe" and (l in cfg.get("mlp_only_layers", []) or (l + 1) % step != 0)) or \
                (glm and l < cfg.get("first_k_dense_replace", 0)):
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
            if glm:  # DeepSeek-V3's router (Glm4MoeMoE.route_tokens_to_experts)
                top, wt = route_deepseek(cfg, lg[t], W.get(p + "mlp.gate.e_score_correction_bias"))
            for e, w in zip(top, wt):
                if arch == "mixtral":
                    q_ = p + "block_sparse_moe.experts.%d." % e
                    w1, w3, w2 = W[q_ + "w1.weight"], W[q_ + "w3.weight"], W[q_ + "w2.weight"]
                else:
                    q_ = p + "mlp.experts.%d." % e
                    w1, w3, w2 = W[q_ + "gate_proj.weight"], W[q_ + "up_proj.weight"], W[q_ + "down_proj.weight"]
                g = w1 @ h[t]
                out[t] += w * (w2 @ (g / (1 + np.exp(-g)) * (w3 @ h[t])))
        if glm and cfg.get("n_shared_experts"):
            q_ = p + "mlp.shared_experts."
            g = h @ W[q_ + "gate_proj.weight"].T
            out += (silu(g) * (h @ W[q_ + "up_proj.weight"].T)) @ W[q_ + "down_proj.weight"].T
        x = x + out
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


def dequantized_gpt_oss(W, p):
    """gpt-oss's fused Hugging Face tensors made of the pack's (attention and norms keep
    their names; router, sinks, expert matrices and biases are refolded)"""
    attn = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj"}
    for name in p.tensors:
        if name in ("token_embd", "output", "output_norm"):
            W[{"token_embd": "model.embed_tokens.weight", "output": "lm_head.weight",
               "output_norm": "model.norm.weight"}[name]] = p.tensor(name)
            continue
        _, l, what = name.split(".", 2)
        q = "model.layers.%s." % l
        base, _, suffix = what.partition(".")
        t = p.tensor(name)
        if base in attn:
            W[q + "self_attn.%s.%s" % (attn[base], suffix or "weight")] = t
        elif base in ("attn_norm", "ffn_norm"):
            W[q + ("input_layernorm" if base == "attn_norm" else "post_attention_layernorm") + ".weight"] = t
        elif base == "attn_sinks":
            W[q + "self_attn.sinks"] = t
        elif base == "ffn_gate_inp":
            W[q + "mlp.router." + (suffix or "weight")] = t
        elif base in ("ffn_gate_exps", "ffn_up_exps"):
            first = 0 if base == "ffn_gate_exps" else 1  # gate even, up odd
            W[q + "mlp.experts.gate_up_proj_bias"][:, first::2] = t
        elif base == "ffn_down_exps":
            W[q + "mlp.experts.down_proj_bias"] = t
        else:
            raise ValueError(name)
    for (l, e) in p.experts:
        x = "model.layers.%d.mlp.experts." % l
        W[x + "gate_up_proj"][e][:, 0::2] = p.expert(l, e, 0).T
        W[x + "gate_up_proj"][e][:, 1::2] = p.expert(l, e, 1).T
        W[x + "down_proj"][e] = p.expert(l, e, 2).T
    return W


def dequantized(folder, pack_path):
    """The folder's weights replaced by the pack's dequantized ones (same names)."""
    W = load_safetensors(folder)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    p = moepack_ref.Pack(pack_path)
    if cfg["model_type"] == "gpt_oss":
        return cfg, dequantized_gpt_oss(W, p)
    if cfg["model_type"] == "qwen3_next":
        return cfg, dequantized_qwen3_next(cfg, W, p)
    mix = cfg["model_type"] == "mixtral"
    canon = {"token_embd": "model.embed_tokens.weight", "output": "lm_head.weight", "output_norm": "model.norm.weight"}
    per = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
           "attn_q_a": "self_attn.q_a_proj", "attn_q_a_norm": "self_attn.q_a_layernorm", "attn_q_b": "self_attn.q_b_proj",
           "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa", "attn_kv_a_norm": "self_attn.kv_a_layernorm",
           "attn_kv_b": "self_attn.kv_b_proj", "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
           "ffn_up_shexp": "mlp.shared_experts.up_proj", "ffn_down_shexp": "mlp.shared_experts.down_proj",
           "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
           "ffn_gate_inp": "block_sparse_moe.gate" if mix else "mlp.gate"}
    for name in p.tensors:
        if name in canon:
            hf = canon[name]
        elif name.endswith(".bias"):  # blk.L.attn_q.bias -> model.layers.L.self_attn.q_proj.bias
            _, l, what, _ = name.split(".")
            hf = "model.layers.%s.%s.bias" % (l, per[what])
        else:
            _, l, what = name.split(".", 2)
            hf = ("model.layers.%s.mlp.gate.e_score_correction_bias" % l if what == "exp_probs_b"
                  else "model.layers.%s.%s.weight" % (l, per[what]))
        W[hf] = p.tensor(name)
    for (l, e) in p.experts:
        names = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")  # Qwen3 and DeepSeek alike
        base = ("model.layers.%d.block_sparse_moe.experts.%d." if mix else "model.layers.%d.mlp.experts.%d.") % (l, e)
        for m, nm in enumerate(names):
            W[base + nm + ".weight"] = p.expert(l, e, m)
    return cfg, W


if __name__ == "__main__":
    folder, toks, out = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], sys.argv[3]
    args = sys.argv[4:]
    if "--dequant" in args:
        cfg, W = dequantized(folder, args[args.index("--dequant") + 1])
    else:
        cfg, W = json.load(open(os.path.join(folder, "config.json"))), load_safetensors(folder)
    if "--experts-per-token" in args:  # the model routed to fewer experts, as its config would say
        cfg["num_experts_per_tok"] = int(args[args.index("--experts-per-token") + 1])
    np.save(out, forward(cfg, W, np.array(toks), absorbed="--absorbed" in args))
