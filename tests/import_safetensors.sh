#!/bin/sh
# Hugging Face folders written by numpy (tests/write_model.py): single file, sharded,
# bf16, FP8 with 128x128 block scales; each architecture. Packed values are compared
# with the numpy weights: exactly for f32, within the float64 q8/q4 bound otherwise.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
W="$TESTS_DIR/write_model.py"
check "mixtral single" py "$W" safetensors mx --arch=mixtral
check "mixtral sharded" py "$W" safetensors mx3 --arch=mixtral --shards=3
check "qwen3 bf16" py "$W" safetensors qw --arch=qwen3_moe --dtype=bf16
check "deepseek fp8" py "$W" safetensors ds --arch=deepseek_v3 --fp8 --shards=2
# a small real sentencepiece-style tokenizer: lower-case letters, digits and "▁"
py -c '
import json
chars = ["<unk>", "<s>", "</s>", "\u2581"] + [chr(c) for c in range(97, 123)] + [str(d) for d in range(10)]
vocab = {t: i for i, t in enumerate(chars)}
vocab["\u2581a"] = len(vocab)
json.dump({"model": {"type": "BPE", "vocab": vocab, "merges": ["\u2581 a"], "unk_token": "<unk>", "fuse_unk": True},
           "added_tokens": [{"id": i, "content": chars[i], "special": True} for i in range(3)],
           "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                          {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
           "pre_tokenizer": None, "decoder": {"type": "Sequence", "decoders": [
               {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
               {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}, open("mx/tokenizer.json", "w"))'
printf '{"chat_template": "{%% for m in messages %%}{{ m.content }}{%% endfor %%}"}' >mx/tokenizer_config.json
check "pack mixtral f32" "$MOE_PACK" --no-progress -q f32 --zstd-min-saving 100 mx mx.moe
# hand-computed: "▁a▁ab" merges to ▁a ▁a b; "XY" is unknown, fused into one <unk>
check "packed tokenizer" [ "$("$MOE_RUN" --tokenize -m mx.moe -p "a ab")" = "[40, 40, 5]" ]
check "unknown characters fused" [ "$("$MOE_RUN" --tokenize -m mx.moe -p "aXYa")" = "[40, 0, 4]" ]
check "pack mixtral q8" "$MOE_PACK" --no-progress -q q8 --zstd-min-saving 100 mx mx8.moe
check "pack sharded q4" "$MOE_PACK" --no-progress -q q4 --zstd-min-saving 100 mx3 mx4.moe
check "pack qwen3 keep" "$MOE_PACK" --no-progress -q keep --zstd-min-saving 100 qw qw.moe
if grep -q "has no tokenizer (no tokenizer.json); the pack runs on token ids only" "$WORK/err"; then ok
else not_ok "no warning for a folder without tokenizer.json"; fi
check "pack deepseek f32" "$MOE_PACK" --no-progress -q f32 --zstd-min-saving 100 ds ds.moe
if grep -q "multi-token" "$WORK/err"; then ok; else not_ok "DeepSeek MTP layer not reported as skipped"; fi
check "the skipped multi-token-prediction layer is in --info" sh -c "'$MOE_PACK' --info ds.moe | grep -Eq 'provenance.skipped_mtp_tensors +[1-9]'"
check "values" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import json
import numpy as np
import moepack_ref as r
import write_model as wm

def hf_to_canon(arch, cfg):
    """canonical pack name -> HF name for every tensor of the model"""
    m = {"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight", "output": "lm_head.weight"}
    base = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
            "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
            "attn_q_a": "self_attn.q_a_proj", "attn_q_a_norm": "self_attn.q_a_layernorm",
            "attn_q_b": "self_attn.q_b_proj", "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
            "attn_kv_a_norm": "self_attn.kv_a_layernorm", "attn_kv_b": "self_attn.kv_b_proj",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
            "ffn_gate_shexp": "mlp.shared_experts.gate_proj", "ffn_up_shexp": "mlp.shared_experts.up_proj",
            "ffn_down_shexp": "mlp.shared_experts.down_proj",
            "ffn_gate_inp": "block_sparse_moe.gate" if arch == "mixtral" else "mlp.gate"}
    for l in range(cfg["num_hidden_layers"]):
        for k, v in base.items():
            m["blk.%d.%s" % (l, k)] = "model.layers.%d.%s.weight" % (l, v)
        m["blk.%d.exp_probs_b" % l] = "model.layers.%d.mlp.gate.e_score_correction_bias" % l
    return m

def expert_names(arch, l, e):
    if arch == "mixtral":
        return ["model.layers.%d.block_sparse_moe.experts.%d.%s.weight" % (l, e, n) for n in ("w1", "w3", "w2")]
    return ["model.layers.%d.mlp.experts.%d.%s.weight" % (l, e, n) for n in ("gate_proj", "up_proj", "down_proj")]

def is_fp8(hf_name, x):
    """tensors write_model.py stores as FP8 with --fp8"""
    return x.ndim == 2 and any(k in hf_name for k in ("proj", ".w1.", ".w2.", ".w3."))

def source_value(hf_name, x, fp8, src_round):
    """what the source holds, as float64"""
    if fp8 and is_fp8(hf_name, x):
        return wm.fp8_blocks(x)[2]
    if src_round == "bf16":
        return r.dequant("bf16", wm.to_bf16(x).tobytes(), 1, x.size).reshape(x.shape)
    return x.astype(np.float64)

def bound(x, t):
    """largest error the pack type allows for source x (float64 q8/q4 math, fp16 scales)"""
    if t == "f32":
        return np.zeros_like(x)
    if t == "f16":
        return np.abs(x) * 2.0 ** -11 + 2.0 ** -25
    if t == "bf16":
        return np.abs(x) * 2.0 ** -8
    # half a step (q8) or a whole one (q4: +7 clamp), plus the fp16 rounding of the scale times |q|
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    lim = amax / 127 * (0.5 + 127 * 2.0 ** -11) if t == "q8" else amax / 8 * (1 + 8 * 2.0 ** -11)
    return np.broadcast_to(lim + 1e-7, b.shape).reshape(x.shape)

def same_as_reference(got, want, t):
    """q8/q4 values equal llama.cpp's algorithm run in float64, but for rare float32 ties"""
    if t not in ("q8", "q4"):
        return True
    q, d = (r.q8_0_quantize if t == "q8" else r.q4_0_quantize)(want.reshape(-1, want.shape[-1]))
    ref = r.q_dequant(q, d, t).reshape(got.shape)
    return np.mean(ref != got) <= 1e-3

def compare(pack, arch, fp8=False, src_round=None):
    p = r.Pack(pack)
    w = wm.weights(arch)
    names = hf_to_canon(arch, wm.CONFIGS[arch])
    for cname, t in p.tensors.items():
        hn = names[cname]
        want = source_value(hn, w[hn], fp8, src_round)
        got = p.tensor(cname)
        assert got.shape == want.shape, (cname, got.shape, want.shape)
        err = np.abs(got - want)
        assert (err <= bound(want, t["type"])).all(), (pack, cname, t["type"], err.max())
        assert same_as_reference(got, want, t["type"]), (pack, cname, "differs from the float64 reference")
    for (l, e) in p.experts:
        for m, hn in enumerate(expert_names(arch, l, e)):
            want = source_value(hn, w[hn], fp8, src_round)
            got = p.expert(l, e, m)
            t = p.layout["matrices"][m]["type"]
            assert (np.abs(got - want) <= bound(want, t)).all(), (pack, hn, t, np.abs(got - want).max())
            assert same_as_reference(got, want, t), (pack, hn, "differs from the float64 reference")
    return p, len(p.tensors)

p, n = compare("mx.moe", "mixtral")
assert n == 2 + 2 * 7 + 1, n
assert p.meta["tokenizer.json"].startswith(b'{"model"'), "tokenizer.json not embedded"
assert "for m in messages" in p.meta["tokenizer.chat_template"], "chat template not extracted"
assert p.flags & 1, "tokenizer flag"
compare("mx8.moe", "mixtral")
compare("mx4.moe", "mixtral")
p, _ = compare("qw.moe", "qwen3_moe", src_round="bf16")
assert p.tensors["blk.0.attn_q"]["type"] == "bf16" and p.layout["matrices"][0]["type"] == "bf16", "keep bf16"
p, _ = compare("ds.moe", "deepseek_v3", fp8=True)
assert "blk.2.attn_q_a" not in p.tensors, "MTP layer 2 must be skipped"
assert (0, 0) not in p.experts and (1, 3) in p.experts, "layer 0 is dense"
PY
finish
