#!/bin/sh
# GGUF v3 files written by numpy (tests/write_model.py) the way llama.cpp's converter
# writes them: Mixtral as arch "llama" with attn_q/attn_k rows permuted per head,
# stacked expert tensors, F32/F16/BF16/Q8_0/Q4_0 types. The pack must hold the same
# model as the Hugging Face folder of the same weights, and keep Q8_0/Q4_0 lossless.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
W="$TESTS_DIR/write_model.py"
check "write folder" py "$W" safetensors mx --arch=mixtral
check "write gguf f32" py "$W" gguf all32.gguf --types=attn=F32,experts=F32,embed=F32,output=F32
check "write gguf mixed" py "$W" gguf mixed.gguf --types=attn=Q8_0,experts=Q4_0,embed=F16,output=BF16
check "write qwen3 gguf" py "$W" gguf qw.gguf --arch=qwen3_moe --types=attn=F32,experts=F32,embed=F32,output=F32
check "write qwen3 folder" py "$W" safetensors qw --arch=qwen3_moe
check "pack folder f32" "$MOE_PACK" --no-progress -q f32 --zstd-min-saving 100 mx st.moe
check "pack gguf f32" "$MOE_PACK" --no-progress -q f32 --zstd-min-saving 100 all32.gguf g32.moe
if grep -q "tokenizer.ggml.model = none" "$WORK/err"; then ok; else not_ok "no warning for a GGUF without tokenizer"; fi
check "pack gguf keep" "$MOE_PACK" --no-progress -q keep --zstd-min-saving 100 mixed.gguf keep.moe
check "pack gguf requantize" "$MOE_PACK" --no-progress -q q8 --zstd-min-saving 100 mixed.gguf rq.moe
check "pack qwen3 both" sh -c "'$MOE_PACK' --no-progress -q f32 --zstd-min-saving 100 qw.gguf qg.moe &&
	'$MOE_PACK' --no-progress -q f32 --zstd-min-saving 100 qw qs.moe"
check "same model" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import numpy as np
import moepack_ref as r
import write_model as wm

# 1. f32 GGUF == f32 folder, byte for byte: the q/k permutation is undone
a, b = r.Pack("st.moe"), r.Pack("g32.moe")
assert set(a.tensors) == set(b.tensors)
for n in a.tensors:
    assert a.tensor_bytes(n) == b.tensor_bytes(n), n
for k in a.experts:
    assert a.expert_raw(*k) == b.expert_raw(*k), k
assert b.meta["hparams.head_dim"] == 32 and b.meta["hparams.n_kv_heads"] == 2
assert b.meta["provenance.source_format"] == "gguf"
assert "tokenizer.json" not in b.meta and not (b.flags & 1)

# 2. --quant keep: Q8_0 / Q4_0 blocks copied, not requantized; F16/BF16 kept
k = r.Pack("keep.moe")
w = wm.weights("mixtral")
c = wm.CONFIGS["mixtral"]
q_hf = w["model.layers.1.self_attn.q_proj.weight"]
qq, qd = r.q8_0_quantize(q_hf)   # the GGUF holds these codes, in permuted row order
codes, scales = r.split_codes("q8", k.tensor_bytes("blk.1.attn_q"), *q_hf.shape)
assert k.tensors["blk.1.attn_q"]["type"] == "q8"
assert np.frombuffer(codes, np.int8).reshape(q_hf.shape).tolist() == qq.tolist(), "Q8_0 codes changed"
assert (scales == qd.reshape(-1).view(np.uint16)).all(), "Q8_0 scales changed"
assert [m["type"] for m in k.layout["matrices"]] == ["q4"] * 3
up = w["model.layers.0.block_sparse_moe.experts.3.w3.weight"]
q4, d4 = r.q4_0_quantize(up)
got = k.expert(0, 3, 1)
assert (got == r.q_dequant(q4, d4, "q4")).all(), "Q4_0 expert values changed"
assert k.tensors["token_embd"]["type"] == "f16" and k.tensors["output"]["type"] == "bf16"
assert (k.tensor("token_embd") == w["model.embed_tokens.weight"].astype(np.float16).astype(np.float64)).all()

# 3. requantizing Q4_0 experts to q8 goes through their dequantized values
rq = r.Pack("rq.moe")
assert rq.layout["matrices"][0]["type"] == "q8"
deq = r.q_dequant(q4, d4, "q4")
q8, d8 = r.q8_0_quantize(deq)
got, ref = rq.expert(0, 3, 1), r.q_dequant(q8, d8, "q8")
# dequantized Q4_0 blocks put many values exactly on q8 half-steps (x/d = 63.5): float32
# (as in ggml) and float64 may round those differently; everywhere else they agree
amax = np.abs(deq.reshape(-1, 32)).max(axis=1, keepdims=True)
v = np.abs((deq.reshape(-1, 32) / (amax / 127)).reshape(deq.shape))
tie = np.abs(v % 1 - 0.5) < 1e-4
assert ((got == ref) | tie).all(), "requantized q8 differs from the float64 reference off ties"

# 4. qwen3moe GGUF (no permutation) == its folder
a, b = r.Pack("qs.moe"), r.Pack("qg.moe")
for n in a.tensors:
    assert a.tensor_bytes(n) == b.tensor_bytes(n), n
for kk in a.experts:
    assert a.expert_raw(*kk) == b.expert_raw(*kk), kk
assert b.meta["hparams.expert_ff"] == 64 and b.meta["hparams.head_dim"] == 64
PY
finish
