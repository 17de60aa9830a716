#!/bin/sh
# GGUF's block types as people download them (Q4_1, Q5_0, Q5_1, Q2_K .. Q6_K, IQ4_NL,
# IQ4_XS, MXFP4), written by numpy (tests/gguf_blocks.py, whose decoders agree with
# ggml-quants.c). moe-pack keeps them by default, bit for bit; moe-run's logits on
# them match the float64 forward pass (tests/reference.py) on the same dequantized
# weights. An _M-style mix (one layer's ffn_down in more bits) keeps both types, as
# two expert layouts, through the mapped and the cached expert paths. Floats are
# quantized into the K types and llama.cpp's mixes, closer than simple rounding.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
W="$TESTS_DIR/write_model.py"
REF="$TESTS_DIR/reference.py"
T=3,17,255,1,0,99,51,42,7,30,12,64,128,5,6,40,222,33,44,111
check "write folder" py "$W" safetensors m256 --arch=mixtral256
cat >same.py <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import moepack_ref as r
import gguf_blocks as gb
import write_model as wm
gguf, pack, t = sys.argv[2], sys.argv[3], sys.argv[4]
p = r.Pack(pack)
assert p.meta["provenance.quant"] == "auto"
assert [m["type"] for m in p.layout["matrices"]] == [t] * 3, p.layout
for n in ("blk.0.attn_q", "blk.1.attn_output", "token_embd", "output"):
    assert p.tensors[n]["type"] == t, (n, p.tensors[n]["type"])
# kept bit for bit: the pack's bytes are the blocks the GGUF holds
w = wm.weights("mixtral256")
v = w["model.layers.1.self_attn.v_proj.weight"]
assert p.tensor_bytes("blk.1.attn_v") == gb.encode(t, v), "attn_v blocks changed"
e = w["model.layers.0.block_sparse_moe.experts.2.w2.weight"]
assert p.expert_matrix_bytes(0, 2, 2) == gb.encode(t, e), "expert blocks changed"
PY
cat >cmp.py <<'PY'
import sys
import numpy as np
r = np.load(sys.argv[2])
g = np.fromfile(sys.argv[1], np.float32).reshape(r.shape)
def lsm(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))
kl = (np.exp(lsm(r)) * (lsm(r) - lsm(g))).sum(-1).mean()
top1 = (r.argmax(-1) == g.argmax(-1)).mean()
rel = np.abs(r - g).max() / np.abs(r).max()
print("%s: max|d|/max|logit| %.2e, top-1 %.2f, mean KL %.2e" % (sys.argv[1], rel, top1, kl))
# what is left is the int8 rounding of the activations, as for q8/q4 (engine_logits.sh)
sys.exit(0 if kl <= 1e-2 and top1 >= 0.75 else 1)
PY
for t in q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k iq4_nl iq4_xs mxfp4; do
	T_UP=$(echo $t | tr a-z A-Z)
	check "$t gguf" py "$W" gguf $t.gguf --arch=mixtral256 --types=attn=$T_UP,experts=$T_UP,embed=$T_UP,output=$T_UP
	check "$t pack" "$MOE_PACK" --no-progress --zstd-min-saving 100 $t.gguf $t.moe
	check "$t kept" py same.py "$TESTS_DIR" $t.gguf $t.moe $t
	check "$t reference" py "$REF" m256 "$T" $t.npy --dequant $t.moe
	check "$t run" "$MOE_RUN" -m $t.moe --tokens "$T" -n 0 -b 7 --kv-type f32 --logits-out $t.bin
	check "$t logits" py cmp.py $t.bin $t.npy
	cat "$WORK/out"
done
# every kernel implementation on one K type and the two tables of levels, IQ4 and MXFP4
# (the default one ran above)
for k in scalar avx2 avx512; do
	for t in q3_k iq4_xs mxfp4; do
		if MOE_KERNEL=$k "$MOE_RUN" -m $t.moe --tokens "$T" -n 0 -b 7 --kv-type f32 --logits-out $t.$k.bin \
			>/dev/null 2>"$WORK/err"; then
			check "$t logits $k" py cmp.py $t.$k.bin $t.npy
		elif grep -q "not an implementation this CPU runs" "$WORK/err"; then
			echo "$k: not on this CPU"
		else
			not_ok "$t run with $k"; cat "$WORK/err" >&2
		fi
	done
done

# Q4_K_M-style: ffn_down of layer 1 in Q6_K: two expert layouts, each kept as it is
check "mix gguf" py "$W" gguf mix.gguf --arch=mixtral256 --types=attn=Q4_K,experts=Q4_K,embed=Q6_K,output=Q6_K \
	--down1=Q6_K
check "mix pack" "$MOE_PACK" --no-progress --zstd-min-saving 100 mix.gguf mix.moe
check "mix pack, kept" "$MOE_PACK" --no-progress -q keep --zstd-min-saving 100 mix.gguf keep.moe
check "mix types" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import moepack_ref as r
import gguf_blocks as gb
import write_model as wm
for f in ("mix.moe", "keep.moe"):
    p = r.Pack(f)
    assert [[m["type"] for m in l["matrices"]] for l in p.layouts] == [["q4_k"] * 3, ["q4_k", "q4_k", "q6_k"]], p.layouts
    assert all(p.experts[(0, e)]["layout"] == 0 and p.experts[(1, e)]["layout"] == 1 for e in range(4))
    w = wm.weights("mixtral256")
    d1 = w["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    assert p.expert_matrix_bytes(1, 3, 2) == gb.encode("q6_k", d1), "layer 1 down blocks changed"
    assert p.tensors["output"]["type"] == "q6_k" and p.tensors["blk.0.attn_k"]["type"] == "q4_k"
PY
check "mix info" "$MOE_PACK" --info mix.moe
if grep -q "down q4_k,q6_k \[256, 256\]; .* bytes raw at most (types differ by layer)" "$WORK/out"; then ok
else not_ok "--info does not show the layouts"; cat "$WORK/out" >&2; fi
check "mix verify" "$MOE_PACK" --verify mix.moe
check "mix reference" py "$REF" m256 "$T" mix.npy --dequant mix.moe
check "mix run" "$MOE_RUN" -m mix.moe --tokens "$T" -n 0 -b 7 --kv-type f32 --logits-out mix.bin
check "mix logits" py cmp.py mix.bin mix.npy
# the expert cache (a budget below the experts' size) streams both layouts: the same logits
check "mix run, cache" "$MOE_RUN" -m mix.moe --tokens "$T" -n 0 -b 7 --kv-type f32 -c 32 --logits-out mixc.bin \
	--ram-budget 1M --stats-json mixc.json
check "mix run, mapped" "$MOE_RUN" -m mix.moe --tokens "$T" -n 0 -b 7 --kv-type f32 -c 32 --logits-out mixm.bin \
	--no-offload
check "mix cache logits = mapped" cmp mixc.bin mixm.bin
check "mix cache was used" py -c "import json; e = json.load(open('mixc.json'))['experts']; assert e['slots'] < 8 and e['misses'] > 8, e"
# Floats quantized into the K types (src/quant/kquant.c): the independent decoders read
# the blocks back closer to the float weights than the blocks of gguf_blocks.py's
# range-rounding encoder, within a bound per type; logits on them match the reference
cat >kq.py <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import moepack_ref as r
import gguf_blocks as gb
import write_model as wm
p, t = r.Pack(sys.argv[2]), sys.argv[3]
bound = {"q2_k": 0.40, "q3_k": 0.20, "q4_k": 0.095, "q5_k": 0.048, "q6_k": 0.024}[t]
w = wm.weights("mixtral256")
se = ss = se_simple = 0.0
for (l, e) in sorted(p.experts):
    for m, hn in enumerate(("w1", "w3", "w2")):
        x = w["model.layers.%d.block_sparse_moe.experts.%d.%s.weight" % (l, e, hn)].astype(np.float64)
        assert p.expert_layout(l, e)["matrices"][m]["type"] == t
        ours = ((p.expert(l, e, m) - x) ** 2).sum()
        simple = ((gb.decode(t, gb.encode(t, x), x.size).reshape(x.shape) - x) ** 2).sum()
        assert ours <= simple, (l, e, m, ours, simple)
        se, se_simple, ss = se + ours, se_simple + simple, ss + (x ** 2).sum()
rel, rel_simple = np.sqrt(se / ss), np.sqrt(se_simple / ss)
print("%s: experts' RMS error / RMS %.4f (range-rounding encoder %.4f)" % (t, rel, rel_simple))
sys.exit(0 if rel <= bound else 1)
PY
for t in q2_k q3_k q4_k q5_k q6_k; do
	check "$t from floats" "$MOE_PACK" --no-progress --zstd-min-saving 100 -q $t m256 k-$t.moe
	check "$t from floats: error" py kq.py "$TESTS_DIR" k-$t.moe $t
	cat "$WORK/out"
done
# MXFP4 from floats: the blocks of llama.cpp's reference quantizer (quantize_row_mxfp4_ref,
# which gguf_blocks.py's encoder follows), byte for byte; logits on them match the reference
check "mxfp4 from floats" "$MOE_PACK" --no-progress --zstd-min-saving 100 -q experts=mxfp4 m256 k-mxfp4.moe
check "mxfp4 from floats: llama.cpp's blocks" py - "$TESTS_DIR" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import moepack_ref as r
import gguf_blocks as gb
import write_model as wm
p, w = r.Pack("k-mxfp4.moe"), wm.weights("mixtral256")
for (l, e) in sorted(p.experts):
    for m, hn in enumerate(("w1", "w3", "w2")):
        x = w["model.layers.%d.block_sparse_moe.experts.%d.%s.weight" % (l, e, hn)]
        assert p.expert_layout(l, e)["matrices"][m]["type"] == "mxfp4"
        assert p.expert_matrix_bytes(l, e, m) == gb.encode("mxfp4", x), (l, e, m)
PY
check "mxfp4 reference" py "$REF" m256 "$T" kmx.npy --dequant k-mxfp4.moe
check "mxfp4 run" "$MOE_RUN" -m k-mxfp4.moe --tokens "$T" -n 0 -b 7 --kv-type f32 --logits-out kmx.bin
check "mxfp4 logits" py cmp.py kmx.bin kmx.npy
cat "$WORK/out"
check "q2_k reference" py "$REF" m256 "$T" k2.npy --dequant k-q2_k.moe
check "q2_k run" "$MOE_RUN" -m k-q2_k.moe --tokens "$T" -n 0 -b 7 --kv-type f32 --logits-out k2.bin
check "q2_k logits" py cmp.py k2.bin k2.npy
# llama.cpp's Q4_K_M mix: with 2 layers, layer 1 is one of the "more bits" layers
check "q4_k_m pack" "$MOE_PACK" --no-progress --zstd-min-saving 100 -q q4_k_m m256 km.moe
check "q4_k_m types" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import moepack_ref as r
p = r.Pack("km.moe")
assert [[m["type"] for m in l["matrices"]] for l in p.layouts] == [["q4_k"] * 3, ["q4_k", "q4_k", "q6_k"]], p.layouts
types = {n: t["type"] for n, t in p.tensors.items() if len(t["dims"]) == 2}
assert types["output"] == "q6_k" and types["blk.1.attn_v"] == "q6_k" and types["blk.0.attn_v"] == "q4_k", types
assert types["token_embd"] == types["blk.1.attn_q"] == types["blk.1.attn_output"] == "q4_k", types
PY
check "q4_k_m reference" py "$REF" m256 "$T" km.npy --dequant km.moe
check "q4_k_m run" "$MOE_RUN" -m km.moe --tokens "$T" -n 0 -b 7 --kv-type f32 --logits-out km.bin
check "q4_k_m logits" py cmp.py km.bin km.npy
# however a prompt is split into forward passes, the same bits (Q4_K, Q5_K and Q6_K
# prefill take 8 tokens per register, decode one): 100 tokens one at a time, in passes
# of 37, and in one pass, under each kernel implementation this CPU runs; experts 1280
# wide, so that a down row's blocks add up in more than one step
check "folder 256, experts 1280 wide" py "$W" safetensors m256w --arch=mixtral256w
check "q4_k_m pack, wide experts" "$MOE_PACK" --no-progress --zstd-min-saving 100 -q q4_k_m m256w kmw.moe
T100=$(py -c "print(','.join(str((i * 7919) % 256) for i in range(100)))")
for k in scalar avx2 avx512 neon; do
	MOE_KERNEL=$k "$MOE_RUN" -m kmw.moe --tokens 1 -n 0 >/dev/null 2>&1 || continue
	for b in 1 37 100; do
		check "q4_k_m $k -b $b" env MOE_KERNEL=$k "$MOE_RUN" -m kmw.moe --tokens "$T100" -n 0 -b $b \
			--logits-out "kmw.$k.b$b.bin"
	done
	check "q4_k_m $k: -b 37 = -b 1, bit for bit" cmp "kmw.$k.b37.bin" "kmw.$k.b1.bin"
	check "q4_k_m $k: -b 100 = -b 1, bit for bit" cmp "kmw.$k.b100.bin" "kmw.$k.b1.bin"
done
# a width that is no multiple of 256 falls back to q8 (Mixtral's 128-wide test model)
check "folder 128" py "$W" safetensors m128
check "q4_k on 128 columns" "$MOE_PACK" --no-progress -q q4_k m128 k128.moe
check "... packed as q8" py -c "import sys; sys.path.insert(0, '$TESTS_DIR'); import moepack_ref as r; p = r.Pack('k128.moe'); assert p.layout['matrices'][0]['type'] == 'q8', p.layout"
# the other block types are kept from GGUFs, not made: asked to, moe-pack says so
expect_error "quantize into iq4_xs" "does not quantize into them" "$MOE_PACK" --no-progress -q experts=iq4_xs m256 k.moe
no_output "quantize into iq4_xs" k.moe
finish
