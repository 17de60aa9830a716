#!/bin/sh
# Synthetic models of every architecture: pack, describe, verify; packing is
# deterministic; the same model through safetensors and GGUF gives identical tensors.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
for preset in mixtral-tiny qwen3-tiny deepseek-tiny; do
	check "$preset: synth to pack" "$MOE_PACK" synth --preset "$preset" --no-progress "$preset.moe"
	check "$preset: --verify" "$MOE_PACK" --verify "$preset.moe"
	check "$preset: --info --json" sh -c "'$MOE_PACK' --info --json $preset.moe > $preset.json"
done
# --info --json describes what the preset says
check "info json content" py - <<'PY'
import json
m = json.load(open("mixtral-tiny.json"))
md = m["metadata"]
assert md["general.architecture"] == "mixtral"
assert md["hparams.n_layers"] == 2 and md["hparams.n_experts"] == 8 and md["hparams.hidden_size"] == 256
assert m["kinds"]["experts"]["blobs"] == 16, m["kinds"]
assert m["kinds"]["norm"]["types"] == "f32" and m["kinds"]["router"]["types"] == "f32"
q = json.load(open("qwen3-tiny.json"))
assert q["metadata"]["general.architecture"] == "qwen3_moe" and q["kinds"]["experts"]["blobs"] == 32
d = json.load(open("deepseek-tiny.json"))
# first layer dense: experts only in layers 1 and 2; shared experts and dense MLP are ffn
assert d["kinds"]["experts"]["blobs"] == 32 and d["kinds"]["ffn"]["tensors"] == 9, d["kinds"]
PY
# a progress bar on a terminal, none otherwise
check "no terminal" "$MOE_PACK" synth --preset qwen3-tiny notty.moe
if grep -q "experts *\[" "$WORK/err"; then not_ok "progress bar drawn without a terminal"; else ok; fi
if command -v script >/dev/null 2>&1; then
	script -qec "'$MOE_PACK' synth --preset qwen3-tiny tty.moe" /dev/null >tty.out 2>&1
	if grep -q "experts *\[=*\] 100% 32/32 experts, [0-9.]* MB/s, in" tty.out; then ok; else not_ok "no progress bar on a terminal"; cat tty.out >&2; fi
fi
# deterministic: same command, same bytes
check "second pack" "$MOE_PACK" synth --preset mixtral-tiny --no-progress again.moe
check "deterministic" cmp mixtral-tiny.moe again.moe
check "seed changes weights" "$MOE_PACK" synth --seed 2 --no-progress seed2.moe
if cmp -s mixtral-tiny.moe seed2.moe; then not_ok "seed 2 gives the same pack"; else ok; fi
# existing output refused, --force replaces it
expect_error "existing output" "exists (use --force" "$MOE_PACK" synth --no-progress again.moe
check "--force" "$MOE_PACK" synth --force --no-progress again.moe
# recipes: q4 experts, f16 attention, 2M alignment
check "q4 recipe" "$MOE_PACK" synth --no-progress -q experts=q4,attn=f16 --align 2M q4.moe
check "q4 layout" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import moepack_ref as r
p = r.Pack("q4.moe")
assert p.alignment == 2 << 20
assert [m["type"] for m in p.layout["matrices"]] == ["q4"] * 3
assert p.tensors["blk.0.attn_q"]["type"] == "f16" and p.tensors["token_embd"]["type"] == "q8"
assert all(x["offset"] % (2 << 20) == 0 for x in p.experts.values())
PY
# through an f32 safetensors folder and an f32 GGUF: the same tensors, byte for byte
check "synth safetensors" "$MOE_PACK" synth --format safetensors --dtype f32 --no-progress st
check "synth safetensors sharded" "$MOE_PACK" synth --format safetensors --dtype f32 --shard-size 1M --no-progress st2
check "synth gguf" "$MOE_PACK" synth --format gguf --dtype f32 --no-progress m.gguf
check "pack safetensors" "$MOE_PACK" --no-progress --zstd-min-saving 100 st st.moe
check "pack sharded" "$MOE_PACK" --no-progress --zstd-min-saving 100 st2 st2.moe
check "pack gguf" "$MOE_PACK" --no-progress --zstd-min-saving 100 m.gguf gguf.moe
check "direct" "$MOE_PACK" synth --no-progress --zstd-min-saving 100 direct.moe
check "same bytes via every route" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import moepack_ref as r
import os
assert len([f for f in os.listdir("st2") if f.endswith(".safetensors")]) > 1, "not sharded"
d = r.Pack("direct.moe")
for other in ("st.moe", "st2.moe", "gguf.moe"):
    o = r.Pack(other)
    assert set(o.tensors) == set(d.tensors), other
    for n in d.tensors:
        assert o.tensor_bytes(n) == d.tensor_bytes(n), (other, n)
    assert set(o.experts) == set(d.experts)
    for k in d.experts:
        assert o.expert_raw(*k) == d.expert_raw(*k), (other, k)
PY
# Routing that depends on the token, as a trained model's does: in a deep synthetic
# model every layer still spreads its tokens over the experts and a token shares no
# more experts with the one before than chance would (before the residual writes were
# scaled, mixtral-tiny's layer 30 of 32 had 48 % of the maximum entropy and 48 % of a
# token's experts were its predecessor's, against 25 % by chance). The figures
# moe-bench sim prints are checked against this script's own count.
for preset in "mixtral-tiny --layers 32" "qwen3-tiny --layers 24 --experts 64 --top-k 8"; do
	name=$(echo "$preset" | tr -c 'a-z0-9\n' _)
	check "$preset: deep synth" "$MOE_PACK" synth --preset $preset --no-progress "$name.moe"
	ids=$(py -c 'import random; r = random.Random(7); print(",".join(str(r.randrange(512)) for _ in range(300)))')
	check "$preset: trace" "$MOE_RUN" -m "$name.moe" --tokens "$ids" -n 0 --no-offload --trace-out "$name.jsonl"
	check "$preset: sim" sh -c "'$MOE_BENCH' sim --trace $name.jsonl --cache-experts 50% --policy lru > $name.sim"
	check "$preset: routing figures, and not collapsed" py - "$name.jsonl" "$name.sim" <<'PY'
import collections, json, math, re, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
E, steps = lines[0]["experts"], lines[1:]
by_layer = collections.defaultdict(list)
for s in steps:
    by_layer[s["layer"]].append(s["experts"])
ent, repeats, later, dist = [], 0, 0, []
for l, rows in sorted(by_layer.items()):
    c = collections.Counter(e for r in rows for e in r)
    n = sum(c.values())
    ent.append(-sum(v / n * math.log2(v / n) for v in c.values()) / math.log2(E))
    last = {}
    for v, r in enumerate(rows):
        for e in r:
            if e in last:
                dist.append(v - last[e])
            last[e] = v
            if v:
                later += 1
                repeats += e in rows[v - 1]
dist.sort()
k = sum(len(s["experts"]) for s in steps) / len(steps)
line = next(l for l in open(sys.argv[2]) if l.startswith("routing:"))
got = [float(x) for x in re.findall(r"[0-9]+(?:\.[0-9]+)?", line)]
want = [100 * sum(ent) / len(ent), 100 * min(ent), ent.index(min(ent)), 100 * repeats / later, 100 * k / E,
        dist[len(dist) // 2], math.ceil(math.log(0.5) / math.log(1 - k / E))]
assert all(abs(g - w) <= 0.051 for g, w in zip(got, want)) and len(got) == len(want), (line, want)
assert min(ent) >= 0.9, ("a layer routes nearly every token alike", line)
assert repeats / later <= 1.5 * k / E, ("tokens repeat their predecessor's experts", line)
PY
done
# GLM-4.5 likewise through its Hugging Face folder and llama.cpp's glm4moe GGUF
# (attention biases, post_attention_norm, leading dense layer)
check "glm synth safetensors" "$MOE_PACK" synth --preset glm-tiny --format safetensors --dtype f32 --no-progress glmst
check "glm synth gguf" "$MOE_PACK" synth --preset glm-tiny --format gguf --dtype f32 --no-progress glm.gguf
check "glm pack safetensors" "$MOE_PACK" --no-progress --zstd-min-saving 100 glmst glmst.moe
check "glm pack gguf" "$MOE_PACK" --no-progress --zstd-min-saving 100 glm.gguf glmgguf.moe
check "glm direct" "$MOE_PACK" synth --preset glm-tiny --no-progress --zstd-min-saving 100 glmdirect.moe
check "glm: same bytes via every route" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import moepack_ref as r
d = r.Pack("glmdirect.moe")
assert "blk.0.attn_q.bias" in d.tensors and "blk.1.exp_probs_b" in d.tensors and "blk.1.ffn_gate_shexp" in d.tensors
for other in ("glmst.moe", "glmgguf.moe"):
    o = r.Pack(other)
    assert set(o.tensors) == set(d.tensors), (other, set(o.tensors) ^ set(d.tensors))
    for n in d.tensors:
        assert o.tensor_bytes(n) == d.tensor_bytes(n), (other, n)
    assert set(o.experts) == set(d.experts)
    for k in d.experts:
        assert o.expert_raw(*k) == d.expert_raw(*k), (other, k)
PY
# gpt-oss likewise through llama.cpp's gpt-oss GGUF (sinks, biases of every expert)
check "gpt-oss synth gguf" "$MOE_PACK" synth --preset gpt-oss-tiny --format gguf --dtype f32 --no-progress oss.gguf
check "gpt-oss pack gguf" "$MOE_PACK" --no-progress --zstd-min-saving 100 oss.gguf ossgguf.moe
check "gpt-oss direct" "$MOE_PACK" synth --preset gpt-oss-tiny --no-progress --zstd-min-saving 100 ossdirect.moe
check "gpt-oss: same bytes via GGUF" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import moepack_ref as r
d, o = r.Pack("ossdirect.moe"), r.Pack("ossgguf.moe")
assert "blk.0.attn_sinks" in d.tensors and "blk.3.ffn_down_exps.bias" in d.tensors
assert set(o.tensors) == set(d.tensors), set(o.tensors) ^ set(d.tensors)
for n in d.tensors:
    assert o.tensor_bytes(n) == d.tensor_bytes(n), n
for k in d.experts:
    assert o.expert_raw(*k) == d.expert_raw(*k), k
PY
# Qwen3.5 as llama.cpp's qwen35moe GGUF (value heads tiled, recurrent_layers, ssm_a without
# a suffix), q8_0 kept as blocks: the same logits as packing the preset directly;
# Qwen3-Next's grouped value heads have no qwen35moe form and are refused
S="--preset qwen3.5-35b-a3b --layers 4 --hidden 128 --heads 2 --kv-heads 1 --vocab 256"
check "qwen3.5 synth gguf" "$MOE_PACK" synth $S --format gguf --dtype q8_0 --no-progress q35.gguf
check "qwen3.5 pack gguf" "$MOE_PACK" --no-progress q35.gguf q35gguf.moe
check "qwen3.5 direct" "$MOE_PACK" synth $S -q q8 --no-progress q35direct.moe
check "qwen3.5 gguf run" "$MOE_RUN" -m q35gguf.moe --tokens 1,2,3,4,5,6 -n 0 -b 3 --logits-out q35g.bin
check "qwen3.5 direct run" "$MOE_RUN" -m q35direct.moe --tokens 1,2,3,4,5,6 -n 0 -b 3 --logits-out q35d.bin
check "qwen3.5: same logits via GGUF" cmp q35g.bin q35d.bin
expect_error "qwen3-next as gguf" "value heads are tiled" "$MOE_PACK" synth --preset qwen3-next-tiny --format gguf --no-progress qn.gguf
# --format plan: the sizes without writing equal those of the pack written
for spec in deepseek-tiny:q8 deepseek-tiny:q8,experts=q4 mixtral-tiny:q4 qwen3-tiny:f16 mixtral-tiny:q4_k_m glm-tiny:q8,experts=q4; do
	preset=${spec%%:*} q=${spec#*:}
	check "plan $spec" sh -c "'$MOE_PACK' synth --preset $preset -q $q --format plan - > plan.txt"
	check "pack $spec" "$MOE_PACK" synth --no-progress --preset "$preset" -q "$q" --force plan.moe
	check "plan $spec = pack" sh -c "'$MOE_PACK' --info --json plan.moe > plan.json && '$PYTHON3' -c '
import json, re
d = json.load(open(\"plan.json\")); k = d[\"kinds\"]
t = open(\"plan.txt\").read()
dense = int(re.search(r\"\\((\\d+) bytes;\", t).group(1))
total, n, blob = map(int, re.search(r\"\\((\\d+) bytes: (\\d+) experts, at most (\\d+) bytes each\\)\", t).groups())
assert dense == sum(v[\"raw_bytes\"] for name, v in k.items() if name != \"experts\"), (dense, k)
assert total == k[\"experts\"][\"raw_bytes\"] and blob == d[\"expert_layout\"][\"raw_blob_bytes\"], (total, n, blob)
'"
done
finish
