"""Write small models the way Hugging Face and llama.cpp do, from numpy alone, for the
importer tests: a safetensors folder (single file, sharded, FP8 with block scales) and
a GGUF v3 file (llama arch with llama.cpp's q/k row permutation, stacked experts,
F32/F16/BF16/Q8_0/Q4_0 and GGUF's other block types). Weights come from a seeded numpy generator and are
also saved as float64 .npy-free dict via load_weights() so tests compare against them.

usage: write_model.py safetensors DIR [--shards N] [--fp8] [--arch ARCH]
       write_model.py gguf FILE [--types SPEC] [--arch ARCH] [--tokenizer none|gpt2]
  ARCH: mixtral, mixtral256, qwen3_moe, deepseek_v3, kimi_k2, glm4_moe, glm4_moe_air
  SPEC: kind=TYPE,... for kinds attn, experts, embed, output and GGUF types F32, F16, BF16, Q8_0,
  Q4_0, Q4_1, Q5_0, Q5_1, Q2_K .. Q6_K, IQ4_NL, IQ4_XS (gguf_blocks.py); --down1=TYPE: layer 1's
  ffn_down experts in another type, as llama.cpp's _M mixes do; --split=N: N files
  FILE-0000k-of-0000N.gguf as llama.cpp's gguf-split writes them; --mla=split: DeepSeek in
  llama.cpp's current layout (attn_k_b, attn_v_b, MLA as MQA); --nextn=1: DeepSeek's
  multi-token-prediction layer kept as the last block; --from=FOLDER: a Hugging Face
  folder's weights and config (Mixtral), for benchmarks; --vocab=FILE.gguf: the tokenizer.* keys
  of another GGUF; --vocab=FOLDER --pre=NAME: a Hugging Face tokenizer written as llama.cpp's
  converter writes it (NAME: tokenizer.ggml.pre, or "llama" for sentencepiece); the
  vocabulary grows to the tokenizer's size
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_vocab  # noqa: E402
import moepack_ref as ref  # noqa: E402

CONFIGS = {
    "mixtral": dict(model_type="mixtral", num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, vocab_size=96, num_local_experts=4,
                    num_experts_per_tok=2, intermediate_size=96, rope_theta=1e6, rms_norm_eps=1e-5,
                    max_position_embeddings=4096, tie_word_embeddings=False),
    "qwen3_moe": dict(model_type="qwen3_moe", num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, vocab_size=96, num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=64, intermediate_size=192, decoder_sparse_step=1,
                      mlp_only_layers=[], norm_topk_prob=True, rope_theta=1e6, rms_norm_eps=1e-6,
                      max_position_embeddings=4096, tie_word_embeddings=False),
    "deepseek_v3": dict(model_type="deepseek_v3", num_hidden_layers=2, hidden_size=256, num_attention_heads=2,
                        q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=64,
                        v_head_dim=64, vocab_size=256, n_routed_experts=4, num_experts_per_tok=2,
                        n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=1,
                        moe_intermediate_size=128, intermediate_size=256, routed_scaling_factor=2.5,
                        scoring_func="sigmoid", norm_topk_prob=True, rope_theta=10000, rms_norm_eps=1e-6,
                        max_position_embeddings=4096, num_nextn_predict_layers=1, tie_word_embeddings=False),
}
# Kimi-K2's shape of DeepSeek-V3: 384 routed experts, 8 used, one group (small matrices)
CONFIGS["kimi_k2"] = dict(CONFIGS["deepseek_v3"], hidden_size=128, q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32,
                          qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=384, num_experts_per_tok=8, n_group=1,
                          topk_group=1, moe_intermediate_size=32, intermediate_size=128, routed_scaling_factor=2.827)
# GLM-4.5: GQA with q/k/v biases, q/k norms and RoPE on half of each head; DeepSeek-V3's
# sigmoid routing with a shared expert; a dense first layer; the MTP layer after the last
CONFIGS["glm4_moe"] = dict(model_type="glm4_moe", num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.5, vocab_size=96,
                           n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                           n_group=1, topk_group=1, moe_intermediate_size=64, intermediate_size=192,
                           routed_scaling_factor=2.5, norm_topk_prob=True, attention_bias=True, use_qk_norm=True,
                           rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=4096,
                           num_nextn_predict_layers=1, tie_word_embeddings=False)
# GLM-4.5-Air's variant: no q/k norms, no routed scaling
CONFIGS["glm4_moe_air"] = dict(CONFIGS["glm4_moe"], use_qk_norm=False, routed_scaling_factor=1.0)
# gpt-oss: q/k/v/o biases, a sink per head, a 4-token sliding window on the even layers,
# YaRN without rounding, a biased router (top k, then softmax), experts fused as in the
# Hugging Face release (gate_up_proj [E, H, 2I], gate and up interleaved; down_proj [E, I, H])
# with biases and the clamped SwiGLU
CONFIGS["gpt_oss"] = dict(model_type="gpt_oss", num_hidden_layers=4, hidden_size=128, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=32, vocab_size=96, num_local_experts=8,
                          num_experts_per_tok=2, experts_per_token=2, intermediate_size=64, sliding_window=4,
                          layer_types=["sliding_attention", "full_attention"] * 2, rope_theta=150000.0,
                          rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0,
                                            original_max_position_embeddings=128, truncate=False),
                          swiglu_limit=7.0, rms_norm_eps=1e-5, max_position_embeddings=4096, attention_bias=True,
                          tie_word_embeddings=False)
# Qwen3-Next: three Gated DeltaNet layers (2 key heads, 4 value heads: each key head serves
# two) then a gated attention layer (q_proj doubled: query and output gate per head, q/k
# norms, RoPE on a quarter of each head); zero-centered norms; routed experts and a shared
# expert behind a sigmoid gate. "qwen3_5_moe" writes the same weights as Qwen3.5-MoE is
# released (the text model under model.language_model., config in text_config, q/k/v, z, b
# and a apart, experts fused)
CONFIGS["qwen3_next"] = dict(model_type="qwen3_next", num_hidden_layers=4, hidden_size=128, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=64, partial_rotary_factor=0.25, vocab_size=96,
                             num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                             shared_expert_intermediate_size=96, intermediate_size=192, decoder_sparse_step=1,
                             mlp_only_layers=[], norm_topk_prob=True, linear_num_key_heads=2, linear_num_value_heads=4,
                             linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
                             layer_types=["linear_attention"] * 3 + ["full_attention"], full_attention_interval=4,
                             rope_theta=1e7, rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False)
CONFIGS["qwen3_5_moe"] = CONFIGS["qwen3_next"]
# Mixtral with every matrix 256 columns wide, for GGUF's 256-weight K blocks
CONFIGS["mixtral256"] = dict(CONFIGS["mixtral"], hidden_size=256, head_dim=64, vocab_size=256, intermediate_size=256)
# and experts 1280 wide: down rows of 5 K blocks (a block adds into a sum already started)
CONFIGS["mixtral256w"] = dict(CONFIGS["mixtral256"], intermediate_size=1280)


def weights(arch, seed=7, vocab=None):
    """HF tensor name -> float32 array, in model order (vocab: another vocabulary size)."""
    c = dict(CONFIGS[arch], vocab_size=vocab or CONFIGS[arch]["vocab_size"])
    arch = c["model_type"]
    rng = np.random.default_rng(seed)
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    w = {}

    def lin(name, rows, cols):
        w[name] = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(name, n):
        w[name] = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w["model.embed_tokens.weight"] = rng.standard_normal((V, H)).astype(np.float32)
    n_layers_written = L + c.get("num_nextn_predict_layers", 0)  # DeepSeek, GLM: + the MTP layer to skip
    glm = arch == "glm4_moe"
    if arch == "gpt_oss":
        return gpt_oss_weights(c, rng, w, lin, norm)
    if arch == "qwen3_next":
        return qwen3_next_weights(c, rng, w, lin)
    for l in range(n_layers_written):
        p = "model.layers.%d." % l
        norm(p + "input_layernorm.weight", H)
        if arch == "deepseek_v3":
            nh, qk = c["num_attention_heads"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
            lin(p + "self_attn.q_a_proj.weight", c["q_lora_rank"], H)
            norm(p + "self_attn.q_a_layernorm.weight", c["q_lora_rank"])
            lin(p + "self_attn.q_b_proj.weight", nh * qk, c["q_lora_rank"])
            lin(p + "self_attn.kv_a_proj_with_mqa.weight", c["kv_lora_rank"] + c["qk_rope_head_dim"], H)
            norm(p + "self_attn.kv_a_layernorm.weight", c["kv_lora_rank"])
            lin(p + "self_attn.kv_b_proj.weight", nh * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"])
            lin(p + "self_attn.o_proj.weight", H, nh * c["v_head_dim"])
        else:
            hd = c["head_dim"]
            lin(p + "self_attn.q_proj.weight", c["num_attention_heads"] * hd, H)
            lin(p + "self_attn.k_proj.weight", c["num_key_value_heads"] * hd, H)
            lin(p + "self_attn.v_proj.weight", c["num_key_value_heads"] * hd, H)
            lin(p + "self_attn.o_proj.weight", H, c["num_attention_heads"] * hd)
            if glm and c["attention_bias"]:
                for m, heads in (("q", c["num_attention_heads"]), ("k", c["num_key_value_heads"]),
                                 ("v", c["num_key_value_heads"])):
                    w[p + "self_attn.%s_proj.bias" % m] = (0.5 * rng.standard_normal(heads * hd)).astype(np.float32)
            if arch == "qwen3_moe" or (glm and c["use_qk_norm"]):
                norm(p + "self_attn.q_norm.weight", hd)
                norm(p + "self_attn.k_norm.weight", hd)
        norm(p + "post_attention_layernorm.weight", H)
        if arch in ("deepseek_v3", "glm4_moe") and l < c["first_k_dense_replace"]:
            I = c["intermediate_size"]
            lin(p + "mlp.gate_proj.weight", I, H)
            lin(p + "mlp.up_proj.weight", I, H)
            lin(p + "mlp.down_proj.weight", H, I)
            continue
        if arch == "mixtral":
            E, I = c["num_local_experts"], c["intermediate_size"]
            lin(p + "block_sparse_moe.gate.weight", E, H)
            for e in range(E):
                q = p + "block_sparse_moe.experts.%d." % e
                lin(q + "w1.weight", I, H)
                lin(q + "w3.weight", I, H)
                lin(q + "w2.weight", H, I)
        else:
            E = c.get("num_experts", c.get("n_routed_experts"))
            I = c["moe_intermediate_size"]
            lin(p + "mlp.gate.weight", E, H)
            if arch in ("deepseek_v3", "glm4_moe"):
                w[p + "mlp.gate.e_score_correction_bias"] = (0.01 * rng.standard_normal(E)).astype(np.float32)
                S = c["n_shared_experts"] * I
                lin(p + "mlp.shared_experts.gate_proj.weight", S, H)
                lin(p + "mlp.shared_experts.up_proj.weight", S, H)
                lin(p + "mlp.shared_experts.down_proj.weight", H, S)
            for e in range(E):
                q = p + "mlp.experts.%d." % e
                lin(q + "gate_proj.weight", I, H)
                lin(q + "up_proj.weight", I, H)
                lin(q + "down_proj.weight", H, I)
    norm("model.norm.weight", H)
    lin("lm_head.weight", V, H)
    return w


def qwen3_next_weights(c, rng, w, lin):
    """modeling_qwen3_next.py's parameters, as the Qwen3-Next release names them"""
    H, L, E, I = c["hidden_size"], c["num_hidden_layers"], c["num_experts"], c["moe_intermediate_size"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    nk, nv, dk, dv = (c["linear_num_key_heads"], c["linear_num_value_heads"], c["linear_key_head_dim"],
                      c["linear_value_head_dim"])
    C = 2 * nk * dk + nv * dv

    def zc(name, n):  # zero-centered RMSNorm weights, used as 1 + w
        w[name] = (0.1 * rng.standard_normal(n)).astype(np.float32)

    for l in range(L):
        p = "model.layers.%d." % l
        zc(p + "input_layernorm.weight", H)
        if c["layer_types"][l] == "linear_attention":
            a = p + "linear_attn."
            lin(a + "in_proj_qkvz.weight", 2 * nk * dk + 2 * nv * dv, H)
            lin(a + "in_proj_ba.weight", 2 * nv, H)
            w[a + "conv1d.weight"] = (0.3 * rng.standard_normal((C, 1, c["linear_conv_kernel_dim"]))).astype(np.float32)
            w[a + "dt_bias"] = (1 + 0.1 * rng.standard_normal(nv)).astype(np.float32)
            w[a + "A_log"] = np.log(rng.uniform(1, 16, nv)).astype(np.float32)
            w[a + "norm.weight"] = (1 + 0.1 * rng.standard_normal(dv)).astype(np.float32)
            lin(a + "out_proj.weight", H, nv * dv)
        else:
            a = p + "self_attn."
            lin(a + "q_proj.weight", nh * hd * 2, H)
            lin(a + "k_proj.weight", nkv * hd, H)
            lin(a + "v_proj.weight", nkv * hd, H)
            lin(a + "o_proj.weight", H, nh * hd)
            zc(a + "q_norm.weight", hd)
            zc(a + "k_norm.weight", hd)
        zc(p + "post_attention_layernorm.weight", H)
        lin(p + "mlp.gate.weight", E, H)
        for e in range(E):
            q = p + "mlp.experts.%d." % e
            lin(q + "gate_proj.weight", I, H)
            lin(q + "up_proj.weight", I, H)
            lin(q + "down_proj.weight", H, I)
        S = c["shared_expert_intermediate_size"]
        lin(p + "mlp.shared_expert.gate_proj.weight", S, H)
        lin(p + "mlp.shared_expert.up_proj.weight", S, H)
        lin(p + "mlp.shared_expert.down_proj.weight", H, S)
        lin(p + "mlp.shared_expert_gate.weight", 1, H)
    zc("model.norm.weight", H)
    lin("lm_head.weight", c["vocab_size"], H)
    return w


def qwen3_next_split(c, w, l):
    """a Gated DeltaNet layer's fused projections apart: q, k, v of the conv channels (each
    of all heads), z, b, a (Qwen3.5's in_proj_qkv, _z, _b, _a)"""
    nk, nv, dk, dv = (c["linear_num_key_heads"], c["linear_num_value_heads"], c["linear_key_head_dim"],
                      c["linear_value_head_dim"])
    r, a = nv // nk, "model.layers.%d.linear_attn." % l
    g = w[a + "in_proj_qkvz.weight"].reshape(nk, 2 * dk + 2 * r * dv, -1)
    parts = np.split(g, [dk, 2 * dk, 2 * dk + r * dv], axis=1)
    q, k, v, z = (x.reshape(-1, g.shape[-1]) for x in parts)
    ba = w[a + "in_proj_ba.weight"].reshape(nk, 2 * r, -1)
    return np.concatenate([q, k, v]), z, ba[:, :r].reshape(nv, -1), ba[:, r:].reshape(nv, -1)


def qwen3_5_release(c, w):
    """Qwen3-Next's weights named and shaped as Qwen3.5-MoE's release"""
    out = {}
    for l in range(c["num_hidden_layers"]):
        if c["layer_types"][l] == "linear_attention":
            a = "model.layers.%d.linear_attn." % l
            qkv, z, b, a_ = qwen3_next_split(c, w, l)
            del w[a + "in_proj_qkvz.weight"], w[a + "in_proj_ba.weight"]
            w[a + "in_proj_qkv.weight"], w[a + "in_proj_z.weight"] = qkv, z
            w[a + "in_proj_b.weight"], w[a + "in_proj_a.weight"] = b, a_
        x = "model.layers.%d.mlp.experts." % l
        E = c["num_experts"]
        gate = [w.pop(x + "%d.gate_proj.weight" % e) for e in range(E)]
        up = [w.pop(x + "%d.up_proj.weight" % e) for e in range(E)]
        down = [w.pop(x + "%d.down_proj.weight" % e) for e in range(E)]
        w[x + "gate_up_proj"] = np.stack([np.concatenate([g, u]) for g, u in zip(gate, up)])
        w[x + "down_proj"] = np.stack(down)
    for name, t in w.items():
        out[name if name.startswith("lm_head") else "model.language_model." + name[len("model."):]] = t
    out["model.visual.patch_embed.proj.weight"] = np.zeros((8, 4), np.float32)  # the vision tower: not imported
    return out


def gpt_oss_weights(c, rng, w, lin, norm):
    """gpt-oss as its Hugging Face checkpoint names and shapes it (the dequantized form of its
    MXFP4 experts); the experts' gate/up biases large enough that the clamp at swiglu_limit is reached"""
    H, V, L, E, I = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"], c["num_local_experts"], c["intermediate_size"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    vec = lambda name, shape, std: w.__setitem__(name, (std * rng.standard_normal(shape)).astype(np.float32))
    w["model.embed_tokens.weight"] = rng.standard_normal((V, H)).astype(np.float32)
    for l in range(L):
        p = "model.layers.%d." % l
        a = p + "self_attn."
        norm(p + "input_layernorm.weight", H)
        for m, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            lin(a + "%s_proj.weight" % m, rows, H)
            vec(a + "%s_proj.bias" % m, rows, 0.5)
        lin(a + "o_proj.weight", H, nh * hd)
        vec(a + "o_proj.bias", H, 0.5)
        vec(a + "sinks", nh, 1.0)
        norm(p + "post_attention_layernorm.weight", H)
        lin(p + "mlp.router.weight", E, H)
        vec(p + "mlp.router.bias", E, 0.5)
        x = p + "mlp.experts."
        vec(x + "gate_up_proj", (E, H, 2 * I), 1 / np.sqrt(H))
        vec(x + "gate_up_proj_bias", (E, 2 * I), 4.0)  # beyond the limit for a few units
        vec(x + "down_proj", (E, I, H), 1 / np.sqrt(I))
        vec(x + "down_proj_bias", (E, H), 0.5)
        for m in ("gate_up_proj", "down_proj"):  # values MXFP4 holds exactly, as the release's are
            t = w[x + m].transpose(0, 2, 1)  # [E, out, in]: blocks of 32 inputs
            t = ref.gguf_blocks.decode("mxfp4", ref.gguf_blocks.encode("mxfp4", t.reshape(-1, t.shape[-1])), t.size)
            w[x + m] = np.ascontiguousarray(t.reshape(E, -1, w[x + m].shape[1]).transpose(0, 2, 1)).astype(np.float32)
    norm("model.norm.weight", H)
    lin("lm_head.weight", V, H)
    return w


def fp8_blocks(x):
    """float32 [rows, cols] -> (fp8 codes, float32 scale_inv [ceil(r/128), ceil(c/128)], dequantized float64)"""
    rows, cols = x.shape
    sr, sc = (rows + 127) // 128, (cols + 127) // 128
    scale = np.ones((sr, sc), np.float32)
    codes = np.zeros(x.shape, np.uint8)
    table = ref.fp8_table()
    deq = np.zeros(x.shape)
    for i in range(sr):
        for j in range(sc):
            blk = x[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].astype(np.float64)
            amax = np.abs(blk).max()
            s = np.float32(amax / 448.0 if amax > 0 else 1.0)
            scale[i, j] = s
            cb = ref.fp8_encode(blk / np.float64(s))
            codes[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = cb
            # what a reader must produce: fp8 value times the float32 scale, rounded to float32
            deq[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (table[cb] * np.float64(s)).astype(np.float32)
    return codes, scale, deq


def mxfp4_release(t):
    """[E, in, out] floats (MXFP4-exact) -> the release's (blocks [E, out, in/32, 16], scales [E, out, in/32]):
    ggml's blocks with the nibbles of weights 2j, 2j+1 in byte j, low first"""
    E, n_in, n_out = t.shape
    raw = np.frombuffer(ref.gguf_blocks.encode("mxfp4", t.transpose(0, 2, 1).reshape(-1, n_in)), np.uint8).reshape(-1, 17)
    v = np.concatenate([raw[:, 1:] & 15, raw[:, 1:] >> 4], axis=1)  # ggml: j low, j + 16 high
    blocks = (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)
    return blocks.reshape(E, n_out, n_in // 32, 16), raw[:, 0].copy().reshape(E, n_out, n_in // 32)


def st_dtype(a):
    return {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint8): "F8_E4M3",
            np.dtype(np.uint16): "BF16"}[a.dtype]


def write_safetensors_file(path, tensors, dtypes=None):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        dt = (dtypes or {}).get(name) or st_dtype(a)
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def to_bf16(x):
    """round to nearest even, as uint16"""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def safetensors(out, arch="mixtral", shards=1, fp8=False, dtype="f32"):
    os.makedirs(out, exist_ok=True)
    c = dict(CONFIGS[arch])
    w = weights(arch)
    if arch == "qwen3_5_moe":  # the multimodal release's nesting, with the same weights
        w = qwen3_5_release(c, w)
        text = {k: v for k, v in c.items() if k not in ("decoder_sparse_step", "mlp_only_layers", "norm_topk_prob",
                                                         "tie_word_embeddings", "partial_rotary_factor", "rope_theta")}
        text.update(model_type="qwen3_5_moe_text", rope_parameters=dict(rope_type="default", rope_theta=c["rope_theta"],
                    partial_rotary_factor=c["partial_rotary_factor"], mrope_section=[11, 11, 10]))
        c = dict(model_type="qwen3_5_moe", tie_word_embeddings=False, text_config=text,
                 vision_config=dict(depth=1, hidden_size=8))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    stored, dtypes = {}, {}
    if c["model_type"] == "gpt_oss":  # the experts as released: MXFP4 blocks and scales, U8
        for name in [n for n in w if n.endswith(("gate_up_proj", "down_proj"))]:
            blocks, scales = mxfp4_release(w.pop(name))
            stored[name + "_blocks"], stored[name + "_scales"] = blocks, scales
            dtypes[name + "_blocks"] = dtypes[name + "_scales"] = "U8"
    for name, a in w.items():
        is_linear = a.ndim == 2 and ("proj" in name or ".w1." in name or ".w2." in name or ".w3." in name)
        if fp8 and is_linear:
            codes, scale, _ = fp8_blocks(a)
            stored[name] = codes
            stored[name + "_scale_inv"] = scale
        elif dtype == "bf16":
            stored[name] = to_bf16(a)
        elif dtype == "f16":
            stored[name] = a.astype(np.float16)
        else:
            stored[name] = a
    names = list(stored)
    if shards == 1:
        write_safetensors_file(os.path.join(out, "model.safetensors"), stored, dtypes)
        return
    per = (len(names) + shards - 1) // shards
    wmap = {}
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        # keep a weight and its scale in one shard, as DeepSeek does
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        write_safetensors_file(os.path.join(out, fname), {n: stored[n] for n in part}, dtypes)
        wmap.update({n: fname for n in part})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wmap}, f)


# ---- GGUF ----

GT = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "BF16": 30, "IQ2_XXS": 16}
GT.update({n.upper(): f[2] for n, f in ref.gguf_blocks.FORMATS.items()})


def gguf_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: pair-interleave rows within each head"""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_encode(a, t):
    if t == "F32":
        return a.astype(np.float32).tobytes()
    if t == "F16":
        return a.astype(np.float16).tobytes()
    if t == "BF16":
        return to_bf16(a).tobytes()
    if t == "Q8_0":
        q, d = ref.q8_0_quantize(a.reshape(-1, a.shape[-1]))
        return ref.gguf_q8_0_blocks(q, d)
    if t == "Q4_0":
        q, d = ref.q4_0_quantize(a.reshape(-1, a.shape[-1]))
        return ref.gguf_q4_0_blocks(q, d)
    if t.lower() in ref.gguf_blocks.FORMATS:
        return ref.gguf_blocks.encode(t.lower(), a.reshape(-1, a.shape[-1]))
    if t == "IQ2_XXS":  # only its size matters: the importer must refuse it by name
        return bytes(a.size // 256 * 66)
    raise ValueError(t)


def qwen3_next_gguf_layer(c, w, l, tiled):
    """one layer as llama.cpp's converter writes it: zero-centered norms + 1, A as -exp(A_log),
    in_proj_qkvz as attn_qkv and attn_gate, in_proj_ba kept (qwen3next) or beta and alpha
    apart with every value-head quantity in tiled order (qwen35moe)"""
    p, b = "model.layers.%d." % l, "blk.%d." % l
    nk, nv, dk, dv = (c["linear_num_key_heads"], c["linear_num_value_heads"], c["linear_key_head_dim"],
                      c["linear_value_head_dim"])
    r = nv // nk

    def tile(x, per, axis=0):  # value heads grouped by key head -> tiled (_reorder_v_heads)
        x = np.moveaxis(x, axis, 0)
        x = x.reshape(nk, r, per, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape)
        return np.ascontiguousarray(np.moveaxis(x, 0, axis))

    t = [(b + "attn_norm.weight", w[p + "input_layernorm.weight"] + 1)]
    if c["layer_types"][l] == "linear_attention":
        a = p + "linear_attn."
        qkv, z, beta, alpha = qwen3_next_split(c, w, l)
        conv, A, dt = w[a + "conv1d.weight"][:, 0, :], -np.exp(w[a + "A_log"]), w[a + "dt_bias"]
        out = w[a + "out_proj.weight"]
        if tiled:
            kd = 2 * nk * dk
            qkv = np.concatenate([qkv[:kd], tile(qkv[kd:], dv)])
            conv = np.concatenate([conv[:kd], tile(conv[kd:], dv)])
            z, beta, alpha, A, dt = tile(z, dv), tile(beta, 1), tile(alpha, 1), tile(A, 1), tile(dt, 1)
            out = tile(out, dv, axis=1)
        t += [(b + "attn_qkv.weight", qkv), (b + "attn_gate.weight", z)]
        t += ([(b + "ssm_beta.weight", beta), (b + "ssm_alpha.weight", alpha)] if tiled
              else [(b + "ssm_ba.weight", w[a + "in_proj_ba.weight"])])
        t += [(b + "ssm_conv1d.weight", np.ascontiguousarray(conv)), (b + "ssm_dt.bias", dt), (b + "ssm_a", A),
              (b + "ssm_norm.weight", w[a + "norm.weight"]), (b + "ssm_out.weight", out)]
    else:
        a = p + "self_attn."
        t += [(b + "attn_q.weight", w[a + "q_proj.weight"]), (b + "attn_k.weight", w[a + "k_proj.weight"]),
              (b + "attn_v.weight", w[a + "v_proj.weight"]), (b + "attn_output.weight", w[a + "o_proj.weight"]),
              (b + "attn_q_norm.weight", w[a + "q_norm.weight"] + 1), (b + "attn_k_norm.weight", w[a + "k_norm.weight"] + 1)]
    t += [(b + "post_attention_norm.weight", w[p + "post_attention_layernorm.weight"] + 1),
          (b + "ffn_gate_inp.weight", w[p + "mlp.gate.weight"]),
          (b + "ffn_gate_shexp.weight", w[p + "mlp.shared_expert.gate_proj.weight"]),
          (b + "ffn_up_shexp.weight", w[p + "mlp.shared_expert.up_proj.weight"]),
          (b + "ffn_down_shexp.weight", w[p + "mlp.shared_expert.down_proj.weight"]),
          (b + "ffn_gate_inp_shexp.weight", w[p + "mlp.shared_expert_gate.weight"][0])]
    ex = p + "mlp.experts.%d."
    for gname, hname in zip(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"), ("gate_proj", "up_proj", "down_proj")):
        t.append((b + gname + ".weight", np.stack([w[ex % e + hname + ".weight"] for e in range(c["num_experts"])])))
    return t


def gguf(out, arch="mixtral", types="attn=F32,experts=Q8_0,embed=F16,output=Q4_0", tokenizer="none",
         version=3, bad=None, down1=None, split=1, mla="kv_b", nextn=0, folder=None, vocab=None, pre=None):
    if folder:  # a Hugging Face folder's weights and config instead of a generated model
        c = json.load(open(os.path.join(folder, "config.json")))
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import reference
        w = {k: v.astype(np.float32) for k, v in reference.load_safetensors(folder).items()}
    else:
        c = CONFIGS[arch]
        w = weights(arch)
    tok_keys = []
    if vocab:  # a real tokenizer: the vocabulary grows to its size
        tok_keys = gguf_vocab.read_tokenizer_keys(vocab) if vocab.endswith(".gguf") else gguf_vocab.from_hf(vocab, pre)
        c = dict(c, vocab_size=max(c["vocab_size"], gguf_vocab.n_tokens(tok_keys)))
        w = weights(arch, vocab=c["vocab_size"])
    tiled = arch == "qwen3_5_moe"  # llama.cpp's qwen35moe: value heads reordered, tiled over the key heads
    arch = c["model_type"]
    tmap = dict(kv.split("=") for kv in types.split(","))
    ga = {"mixtral": "llama", "qwen3_moe": "qwen3moe", "deepseek_v3": "deepseek2", "glm4_moe": "glm4moe",
          "gpt_oss": "gpt-oss", "qwen3_next": "qwen35moe" if tiled else "qwen3next"}[arch]
    L, H = c["num_hidden_layers"], c["hidden_size"]
    kvs = [("general.architecture", 8, "grok" if bad == "arch" else ga), ("general.alignment", 4, 32),
           (ga + ".block_count", 4, L + nextn), (ga + ".embedding_length", 4, H),
           (ga + ".attention.head_count", 4, c["num_attention_heads"]),
           (ga + ".attention.head_count_kv", 4, c.get("num_key_value_heads", c["num_attention_heads"])),
           (ga + ".rope.freq_base", 6, c["rope_theta"]),
           (ga + ".attention.layer_norm_rms_epsilon", 6, c["rms_norm_eps"]),
           (ga + ".context_length", 4, c["max_position_embeddings"])]
    def mla_kv_b(b, kv_b):
        """attn_kv_b as it was, or llama.cpp's current split: per head k_b transposed and v_b"""
        if mla != "split":
            return [(b + "attn_kv_b.weight", kv_b)]
        nope, vd = c["qk_nope_head_dim"], c["v_head_dim"]
        kv = kv_b.reshape(c["num_attention_heads"], nope + vd, -1)
        return [(b + "attn_k_b.weight", np.ascontiguousarray(kv[:, :nope, :].transpose(0, 2, 1))),
                (b + "attn_v_b.weight", np.ascontiguousarray(kv[:, nope:, :]))]

    if arch == "deepseek_v3":  # llama.cpp's deepseek2 keys (convert_hf_to_gguf.py)
        kvs += [(ga + ".expert_count", 4, c["n_routed_experts"]), (ga + ".expert_used_count", 4, c["num_experts_per_tok"]),
                (ga + ".feed_forward_length", 4, c["intermediate_size"]),
                (ga + ".expert_feed_forward_length", 4, c["moe_intermediate_size"]),
                (ga + ".leading_dense_block_count", 4, c["first_k_dense_replace"]),
                (ga + ".expert_shared_count", 4, c["n_shared_experts"]),
                (ga + ".expert_group_count", 4, c["n_group"]), (ga + ".expert_group_used_count", 4, c["topk_group"]),
                (ga + ".attention.q_lora_rank", 4, c["q_lora_rank"]), (ga + ".attention.kv_lora_rank", 4, c["kv_lora_rank"]),
                (ga + ".attention.key_length", 4, c["qk_nope_head_dim"] + c["qk_rope_head_dim"]),
                (ga + ".attention.value_length", 4, c["v_head_dim"]),
                (ga + ".rope.dimension_count", 4, c["qk_rope_head_dim"]),
                (ga + ".expert_weights_scale", 6, c["routed_scaling_factor"]),
                (ga + ".expert_weights_norm", 7, True), (ga + ".expert_gating_func", 4, 2)]
        if mla == "split":  # MLA stored as MQA: the latent's lengths, the heads' own in the *_mla keys
            kvs = [kv for kv in kvs if kv[0] not in (ga + ".attention.key_length", ga + ".attention.value_length",
                                                      ga + ".attention.head_count_kv")]
            kvs += [(ga + ".attention.head_count_kv", 4, 1),
                    (ga + ".attention.key_length", 4, c["kv_lora_rank"] + c["qk_rope_head_dim"]),
                    (ga + ".attention.value_length", 4, c["kv_lora_rank"]),
                    (ga + ".attention.key_length_mla", 4, c["qk_nope_head_dim"] + c["qk_rope_head_dim"]),
                    (ga + ".attention.value_length_mla", 4, c["v_head_dim"])]
    elif arch == "gpt_oss":  # convert_hf_to_gguf.py's GptOssModel
        rs = c["rope_scaling"]
        kvs += [(ga + ".expert_count", 4, c["num_local_experts"]), (ga + ".expert_used_count", 4, c["num_experts_per_tok"]),
                (ga + ".feed_forward_length", 4, c["intermediate_size"]),
                (ga + ".expert_feed_forward_length", 4, c["intermediate_size"]),
                (ga + ".attention.key_length", 4, c["head_dim"]), (ga + ".attention.value_length", 4, c["head_dim"]),
                (ga + ".attention.sliding_window", 4, c["sliding_window"]),
                (ga + ".rope.scaling.type", 8, "yarn"), (ga + ".rope.scaling.factor", 6, rs["factor"]),
                (ga + ".rope.scaling.original_context_length", 4, rs["original_max_position_embeddings"])]
    elif arch == "glm4_moe":  # convert_hf_to_gguf.py's Glm4MoeModel
        kvs += [(ga + ".expert_count", 4, c["n_routed_experts"]), (ga + ".expert_used_count", 4, c["num_experts_per_tok"]),
                (ga + ".feed_forward_length", 4, c["intermediate_size"]),
                (ga + ".expert_feed_forward_length", 4, c["moe_intermediate_size"]),
                (ga + ".leading_dense_block_count", 4, c["first_k_dense_replace"]),
                (ga + ".expert_shared_count", 4, c["n_shared_experts"]),
                (ga + ".expert_group_count", 4, c["n_group"]), (ga + ".expert_group_used_count", 4, c["topk_group"]),
                (ga + ".attention.key_length", 4, c["head_dim"]), (ga + ".attention.value_length", 4, c["head_dim"]),
                (ga + ".rope.dimension_count", 4, int(c["head_dim"] * c["partial_rotary_factor"])),
                (ga + ".expert_weights_scale", 6, c["routed_scaling_factor"]),
                (ga + ".expert_weights_norm", 7, True), (ga + ".expert_gating_func", 4, 2)]
    elif arch == "qwen3_next":  # convert_hf_to_gguf.py's Qwen3NextModel (qwen35moe: Qwen3_5MoeTextModel)
        nv = c["linear_num_value_heads"]
        kvs += [(ga + ".expert_count", 4, c["num_experts"]), (ga + ".expert_used_count", 4, c["num_experts_per_tok"]),
                (ga + ".feed_forward_length", 4, c["intermediate_size"]),
                (ga + ".expert_feed_forward_length", 4, c["moe_intermediate_size"]),
                (ga + ".expert_shared_feed_forward_length", 4, c["shared_expert_intermediate_size"]),
                (ga + ".attention.key_length", 4, c["head_dim"]), (ga + ".attention.value_length", 4, c["head_dim"]),
                (ga + ".rope.dimension_count", 4, int(c["head_dim"] * c["partial_rotary_factor"])),
                (ga + ".ssm.conv_kernel", 4, c["linear_conv_kernel_dim"]),
                (ga + ".ssm.state_size", 4, c["linear_key_head_dim"]),
                (ga + ".ssm.group_count", 4, c["linear_num_key_heads"]), (ga + ".ssm.time_step_rank", 4, nv),
                (ga + ".ssm.inner_size", 4, nv * c["linear_value_head_dim"]),
                (ga + ".full_attention_interval", 4, c["full_attention_interval"])]
        if tiled:  # the per-layer flags instead of the interval
            kvs += [(ga + ".attention.recurrent_layers", 9, (7, [t == "linear_attention" for t in c["layer_types"]]))]
    elif arch == "mixtral":
        kvs += [(ga + ".expert_count", 4, c["num_local_experts"]), (ga + ".expert_used_count", 4, 2),
                (ga + ".feed_forward_length", 4, c["intermediate_size"]),
                (ga + ".rope.dimension_count", 4, c["head_dim"])]
    else:
        kvs += [(ga + ".expert_count", 4, c["num_experts"]), (ga + ".expert_used_count", 4, 2),
                (ga + ".feed_forward_length", 4, c["intermediate_size"]),
                (ga + ".expert_feed_forward_length", 4, c["moe_intermediate_size"]),
                (ga + ".attention.key_length", 4, c["head_dim"])]
    if tok_keys:
        kvs += tok_keys
    else:
        kvs.append(("tokenizer.ggml.model", 8, tokenizer))
    if tokenizer != "none" and not tok_keys:
        kvs.append(("tokenizer.ggml.tokens", 9, (8, ["<unk>"] + ["t%d" % i for i in range(c["vocab_size"] - 1)])))

    def kind(n):
        if "attn" in n and "norm" not in n:
            return "attn"
        if "exps" in n:
            return "experts"
        if n.startswith("token_embd"):
            return "embed"
        if n.startswith("output.") or n == "output.weight":
            return "output"
        return None

    tensors = [("token_embd.weight", w["model.embed_tokens.weight"])]
    if nextn:  # the multi-token-prediction block kept, as the last block (llama.cpp's --mtp)
        kvs.append((ga + ".nextn_predict_layers", 4, nextn))
    for l in range(L + nextn):
        p = "model.layers.%d." % l
        b = "blk.%d." % l
        if arch == "qwen3_next":
            tensors += qwen3_next_gguf_layer(c, w, l, tiled)
            continue
        tensors.append((b + "attn_norm.weight", w[p + "input_layernorm.weight"]))
        if arch == "deepseek_v3":  # MLA, no permutation: llama.cpp ropes deepseek2 on consecutive pairs
            a = p + "self_attn."
            tensors += [(b + "attn_q_a.weight", w[a + "q_a_proj.weight"]),
                        (b + "attn_q_a_norm.weight", w[a + "q_a_layernorm.weight"]),
                        (b + "attn_q_b.weight", w[a + "q_b_proj.weight"]),
                        (b + "attn_kv_a_mqa.weight", w[a + "kv_a_proj_with_mqa.weight"]),
                        (b + "attn_kv_a_norm.weight", w[a + "kv_a_layernorm.weight"]),
                        *mla_kv_b(b, w[a + "kv_b_proj.weight"]),
                        (b + "attn_output.weight", w[a + "o_proj.weight"]),
                        (b + "ffn_norm.weight", w[p + "post_attention_layernorm.weight"])]
            if l < c["first_k_dense_replace"]:
                tensors += [(b + "ffn_gate.weight", w[p + "mlp.gate_proj.weight"]),
                            (b + "ffn_up.weight", w[p + "mlp.up_proj.weight"]),
                            (b + "ffn_down.weight", w[p + "mlp.down_proj.weight"])]
                continue
            E = c["n_routed_experts"]
            tensors += [(b + "ffn_gate_inp.weight", w[p + "mlp.gate.weight"]),
                        (b + "exp_probs_b.bias", w[p + "mlp.gate.e_score_correction_bias"]),
                        (b + "ffn_gate_shexp.weight", w[p + "mlp.shared_experts.gate_proj.weight"]),
                        (b + "ffn_up_shexp.weight", w[p + "mlp.shared_experts.up_proj.weight"]),
                        (b + "ffn_down_shexp.weight", w[p + "mlp.shared_experts.down_proj.weight"])]
            ex = p + "mlp.experts.%d."
            names = ("gate_proj", "up_proj", "down_proj")
            for gname, hname in zip(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"), names):
                tensors.append((b + gname + ".weight", np.stack([w[ex % e + hname + ".weight"] for e in range(E)])))
            continue
        if arch == "gpt_oss":  # the fused experts split, gate and up de-interleaved, [E, out, in]; biases apart
            a, x = p + "self_attn.", p + "mlp.experts."
            tensors += [(b + "attn_%s.%s" % (g, t), w[a + "%s_proj.%s" % (m, t)])
                        for g, m in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")) for t in ("weight", "bias")]
            gu, gub = w[x + "gate_up_proj"].transpose(0, 2, 1), w[x + "gate_up_proj_bias"]
            tensors += [(b + "attn_sinks.weight", w[a + "sinks"]),
                        (b + "post_attention_norm.weight", w[p + "post_attention_layernorm.weight"]),
                        (b + "ffn_gate_inp.weight", w[p + "mlp.router.weight"]),
                        (b + "ffn_gate_inp.bias", w[p + "mlp.router.bias"]),
                        (b + "ffn_gate_exps.weight", np.ascontiguousarray(gu[:, ::2])),
                        (b + "ffn_up_exps.weight", np.ascontiguousarray(gu[:, 1::2])),
                        (b + "ffn_down_exps.weight", np.ascontiguousarray(w[x + "down_proj"].transpose(0, 2, 1))),
                        (b + "ffn_gate_exps.bias", np.ascontiguousarray(gub[:, ::2])),
                        (b + "ffn_up_exps.bias", np.ascontiguousarray(gub[:, 1::2])),
                        (b + "ffn_down_exps.bias", w[x + "down_proj_bias"])]
            continue
        if arch == "glm4_moe":  # rotate-half already (NEOX): no permutation; biases; post_attention_norm
            a = p + "self_attn."
            tensors += [(b + "attn_q.weight", w[a + "q_proj.weight"]), (b + "attn_q.bias", w[a + "q_proj.bias"]),
                        (b + "attn_k.weight", w[a + "k_proj.weight"]), (b + "attn_k.bias", w[a + "k_proj.bias"]),
                        (b + "attn_v.weight", w[a + "v_proj.weight"]), (b + "attn_v.bias", w[a + "v_proj.bias"]),
                        (b + "attn_output.weight", w[a + "o_proj.weight"])]
            if c["use_qk_norm"]:
                tensors += [(b + "attn_q_norm.weight", w[a + "q_norm.weight"]),
                            (b + "attn_k_norm.weight", w[a + "k_norm.weight"])]
            tensors.append((b + "post_attention_norm.weight", w[p + "post_attention_layernorm.weight"]))
            if l < c["first_k_dense_replace"]:
                tensors += [(b + "ffn_gate.weight", w[p + "mlp.gate_proj.weight"]),
                            (b + "ffn_up.weight", w[p + "mlp.up_proj.weight"]),
                            (b + "ffn_down.weight", w[p + "mlp.down_proj.weight"])]
                continue
            E = c["n_routed_experts"]
            tensors += [(b + "ffn_gate_inp.weight", w[p + "mlp.gate.weight"]),
                        (b + "exp_probs_b.bias", w[p + "mlp.gate.e_score_correction_bias"]),
                        (b + "ffn_gate_shexp.weight", w[p + "mlp.shared_experts.gate_proj.weight"]),
                        (b + "ffn_up_shexp.weight", w[p + "mlp.shared_experts.up_proj.weight"]),
                        (b + "ffn_down_shexp.weight", w[p + "mlp.shared_experts.down_proj.weight"])]
            ex = p + "mlp.experts.%d."
            for gname, hname in zip(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"), ("gate_proj", "up_proj", "down_proj")):
                tensors.append((b + gname + ".weight", np.stack([w[ex % e + hname + ".weight"] for e in range(E)])))
            continue
        q, k = w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"]
        if arch == "mixtral":
            q = gguf_permute(q, c["num_attention_heads"])
            k = gguf_permute(k, c["num_key_value_heads"])
        tensors += [(b + "attn_q.weight", q), (b + "attn_k.weight", k),
                    (b + "attn_v.weight", w[p + "self_attn.v_proj.weight"]),
                    (b + "attn_output.weight", w[p + "self_attn.o_proj.weight"])]
        if arch == "qwen3_moe":
            tensors += [(b + "attn_q_norm.weight", w[p + "self_attn.q_norm.weight"]),
                        (b + "attn_k_norm.weight", w[p + "self_attn.k_norm.weight"])]
        tensors.append((b + "ffn_norm.weight", w[p + "post_attention_layernorm.weight"]))
        if arch == "mixtral":
            E = c["num_local_experts"]
            tensors.append((b + "ffn_gate_inp.weight", w[p + "block_sparse_moe.gate.weight"]))
            ex = p + "block_sparse_moe.experts.%d."
            names = ("w1", "w3", "w2")
        else:
            E = c["num_experts"]
            tensors.append((b + "ffn_gate_inp.weight", w[p + "mlp.gate.weight"]))
            ex = p + "mlp.experts.%d."
            names = ("gate_proj", "up_proj", "down_proj")
        for gname, hname in zip(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"), names):
            tensors.append((b + gname + ".weight", np.stack([w[ex % e + hname + ".weight"] for e in range(E)])))
    tensors += [("output_norm.weight", w["model.norm.weight"] + (arch == "qwen3_next")),
                ("output.weight", w["lm_head.weight"])]

    def wstr(s):
        return gguf_vocab.encode_value(8, s)

    wval = gguf_vocab.encode_value

    typed = []
    for name, a in tensors:
        t = tmap.get(kind(name), "F32") if a.ndim >= 2 and not name.endswith(".bias") else "F32"
        if bad == "iq2" and name == "blk.0.attn_v.weight":
            t = "IQ2_XXS"
        if down1 and name == "blk.1.ffn_down_exps.weight":  # as Q4_K_M gives some layers' ffn_down more bits
            t = down1
        typed.append((name, a, t))

    def write(path, kvs, part):
        head = b"GGUF" + struct.pack("<IQQ", version, len(part), len(kvs))
        for k, t, v in kvs:
            head += wstr(k) + struct.pack("<I", t) + wval(t, v)
        infos, datas, off = b"", [], 0
        for name, a, t in part:
            data = gguf_encode(a, t)
            infos += wstr(name) + struct.pack("<I", a.ndim) + b"".join(struct.pack("<Q", d) for d in a.shape[::-1])
            infos += struct.pack("<IQ", GT[t], off)
            datas.append(data + bytes((32 - len(data) % 32) % 32))
            off += len(datas[-1])
        body = head + infos
        body += bytes((32 - len(body) % 32) % 32)
        with open(path, "wb") as f:
            f.write(body)
            for d in datas:
                f.write(d)

    if split <= 1:
        write(out, kvs, typed)
        return
    # llama.cpp's gguf-split: OUT-0000k-of-0000N.gguf, every key in the first part only, split.* in all
    stem = out[:-5] if out.endswith(".gguf") else out
    for k in range(split):
        part = typed[len(typed) * k // split:len(typed) * (k + 1) // split]
        keys = (kvs if k == 0 else []) + [("split.no", 2, k), ("split.count", 2, split),
                                          ("split.tensors.count", 5, len(typed))]
        write("%s-%05d-of-%05d.gguf" % (stem, k + 1, split), keys, part)


if __name__ == "__main__":
    kind_, out = sys.argv[1], sys.argv[2]
    opts = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "1") for a in sys.argv[3:])
    if kind_ == "safetensors":
        safetensors(out, arch=opts.get("arch", "mixtral"), shards=int(opts.get("shards", 1)),
                    fp8="fp8" in opts, dtype=opts.get("dtype", "f32"))
    else:
        gguf(out, arch=opts.get("arch", "mixtral"), types=opts.get("types", "attn=F32,experts=Q8_0,embed=F16,output=Q4_0"),
             tokenizer=opts.get("tokenizer", "none"), version=int(opts.get("version", 3)), bad=opts.get("bad"),
             down1=opts.get("down1"), split=int(opts.get("split", 1)), mla=opts.get("mla", "kv_b"),
             nextn=int(opts.get("nextn", 0)), folder=opts.get("from"), vocab=opts.get("vocab"), pre=opts.get("pre"))
