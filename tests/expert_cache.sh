#!/bin/sh
# The expert cache under a RAM budget: peak RSS stays within the budget (+64 MiB
# for code and libraries) with a budget of 25% of the experts' bytes, where the
# mmap path goes far over; logits and generated ids are bit-identical to the
# mapped run whatever the budget, policy, prefetch depth, I/O engine (io_uring,
# forced pread) or codec (zstd); the trace replay (moe-bench sim) evicts exactly
# as the cache does; a corrupt blob is an error naming its layer and expert;
# --routes-from replays a trace's routes.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${MOE_BENCH:?run through make check}"
cd "$WORK"
# experts dominate: 32 experts of 6.7 MB (q8), about 2 MB of dense weights
check "synth" "$MOE_PACK" synth --hidden 512 --expert-ff 4096 --layers 4 --vocab 512 m.moe
# f16 experts compress (zstd blobs); the same weights stored raw for reference
check "synth zstd" "$MOE_PACK" synth --hidden 256 --expert-ff 1024 --layers 2 -q experts=f16 --zstd-min-saving 1 z.moe
check "synth same weights, raw" "$MOE_PACK" synth --hidden 256 --expert-ff 1024 --layers 2 -q experts=f16 \
	--zstd-min-saving 100 zr.moe
check "the zstd pack has zstd blobs" py -c '
import sys; sys.path.insert(0, sys.argv[1])
from moepack_ref import Pack
assert all(x["codec"] == 1 for x in Pack("z.moe").experts.values())' "$TESTS_DIR"
experts=$(py -c '
import sys; sys.path.insert(0, sys.argv[1])
from moepack_ref import Pack
p = Pack("m.moe"); print(len(p.experts) * p.layout["raw_size"])' "$TESTS_DIR")
budget=$((experts / 4))
P=1,2,3,4,5,6,7,8,9,10,11,12
run() { "$MOE_RUN" -m m.moe --tokens $P -n 24 -c 256 "$@"; }

# peak RSS against the budget
/usr/bin/time -f %M -o rss.cache "$MOE_RUN" -m m.moe --tokens $P -n 24 -c 256 --ram-budget "$budget" >ids.cache 2>err
/usr/bin/time -f %M -o rss.mmap "$MOE_RUN" -m m.moe --tokens $P -n 24 -c 256 --no-offload >ids.mmap 2>err
limit=$((budget + 64 * 1048576))
check "peak RSS $(($(cat rss.cache) / 1024)) MiB <= budget $((budget / 1048576)) MiB + 64 MiB" \
	[ $(($(cat rss.cache) * 1024)) -le $limit ]
check "the mmap path exceeds that bound ($(($(cat rss.mmap) / 1024)) MiB): the check can fail" \
	[ $(($(cat rss.mmap) * 1024)) -gt $limit ]

# the same bits from every way of getting the experts
run --no-offload --logits-out ref.f32 >ref.ids 2>err
same() { # same DESCRIPTION ARGS...: logits and ids equal to the mapped run
	d=$1
	shift
	if "$@" --logits-out got.f32 >got.ids 2>err && cmp -s ref.f32 got.f32 && cmp -s ref.ids got.ids; then ok
	else not_ok "$d"; cat err >&2; fi
}
same "cache, 25% budget" run --ram-budget "$budget"
same "cache, LFU, prefetch depth 3" run --ram-budget "$budget" --cache-policy lfu --prefetch-depth 3
same "cache, NEXT, prefetch depth 2" run --ram-budget "$budget" --cache-policy next --prefetch-depth 2
# a prompt batch's attention is one sgemm per head, whose rounding depends on the
# batch (engine_logits.sh checks it against the float64 reference): compare batch 3
# with the mapped run at batch 3
cp ref.f32 ref.default.f32 && cp ref.ids ref.default.ids
run --no-offload -b 3 --logits-out ref.f32 >ref.ids 2>err
same "cache, no prefetch, batch 3, io depth 1" run --ram-budget "$budget" --prefetch-depth 0 -b 3 --io-depth 1
mv ref.default.f32 ref.f32 && mv ref.default.ids ref.ids
same "cache, room for everything" run --ram-budget 1G
MOE_IO=pread run --ram-budget "$budget" --logits-out got.f32 --stats-json pread.json >got.ids 2>err
check "forced pread: same bits" cmp ref.f32 got.f32
check "forced pread: said in the stats" py -c 'import json, sys; assert json.load(open(sys.argv[1]))["experts"]["io"].startswith("pread")' pread.json
"$MOE_RUN" -m zr.moe --tokens $P -n 24 -c 256 --no-offload --logits-out zref.f32 >zref.ids 2>err
"$MOE_RUN" -m z.moe --tokens $P -n 24 -c 256 --ram-budget 12M --logits-out zgot.f32 >zgot.ids 2>err
check "zstd blobs through the cache: same bits as raw" cmp zref.f32 zgot.f32
check "zstd: same ids" cmp zref.ids zgot.ids

# The other families under a tight budget: same bits. DeepSeek-V3 and GLM-4.5 (shared
# experts resident, routed ones cached; GLM's biases and partial RoPE), gpt-oss (expert
# biases resident, sinks, sliding windows), Qwen3-Next (linear layers' state, shared expert
# gate): each streams more experts than it has slots
for spec in deepseek-tiny:2400K:32 glm-tiny:3M:32 gpt-oss-tiny:3M:64 qwen3-next-tiny:4M:32; do
	preset=${spec%%:*} rest=${spec#*:}
	budget_f=${rest%:*} n_experts=${rest#*:}
	check "$preset pack" "$MOE_PACK" synth --preset "$preset" "$preset.moe"
	"$MOE_RUN" -m "$preset.moe" --tokens $P -n 24 -c 256 --no-offload --logits-out "$preset.ref.f32" >"$preset.ref.ids" 2>err
	"$MOE_RUN" -m "$preset.moe" --tokens $P -n 24 -c 256 --ram-budget "$budget_f" --stats-json "$preset.json" \
		--logits-out "$preset.got.f32" >"$preset.got.ids" 2>err
	check "$preset under $budget_f: same logits" cmp "$preset.ref.f32" "$preset.got.f32"
	check "$preset: same ids" cmp "$preset.ref.ids" "$preset.got.ids"
	check "$preset: experts were streamed" py -c 'import json, sys; x = json.load(open(sys.argv[1]))["experts"]; assert x["slots"] < int(sys.argv[2]) and x["misses"] > x["slots"], x' "$preset.json" "$n_experts"
done

# stats: what a prefetch run reports adds up
run --ram-budget "$budget" --prefetch-depth 2 --stats-json s.json >/dev/null 2>err
check "stats add up" py -c '
import json, sys
s = json.load(open(sys.argv[1])); x = s["experts"]
assert x["uses"] == x["hits"] + x["prefetch_hits"] + x["misses"], x
assert x["prefetch_issued"] > 0 and x["prefetch_hits"] <= x["prefetch_issued"], x
assert 0 <= x["prefetch_precision"] <= 1 and 0 <= x["prefetch_recall"] <= 1, x
assert x["slots"] >= 2 and x["slots_used"] <= x["slots"] and x["bytes_read"] > 0, x
assert x["io"].startswith("io_uring") or x["io"].startswith("pread"), x
assert len(s["per_token"]) == s["generated_tokens"] - 1, s["per_token"]
assert sum(t["misses"] for t in s["per_token"]) <= x["misses"]' s.json
# every guess never used is either still in a slot at the end or was counted as it
# left; every expert of this raw pack is read as the same number of bytes
check "prefetch waste adds up" py -c '
import json, sys
sys.path.insert(0, sys.argv[2])
from moepack_ref import Pack
x = json.load(open(sys.argv[1]))["experts"]
read = (Pack("m.moe").layout["raw_size"] + 4095) // 4096 * 4096
unused, evicted = x["prefetch_unused_bytes"], x["prefetch_evicted_bytes"]
assert unused % read == 0 and evicted % read == 0 and evicted <= unused, x
never = x["prefetch_issued"] - x["prefetch_hits"]
assert never - x["slots"] <= unused // read <= never, (never, unused // read, x)
assert unused > 0, x' s.json "$TESTS_DIR"
run --ram-budget 1G --prefetch-depth 2 --stats-json all.json >/dev/null 2>err
check "nothing wasted when every expert fits" py -c '
import json, sys
x = json.load(open(sys.argv[1]))["experts"]
assert x["prefetch_unused_bytes"] == 0 and x["prefetch_evicted_bytes"] == 0, x' all.json

# trace replay: one token per step, no prefetch: the simulator evicts as the cache does
for policy in lru lfu next; do
	run --ram-budget "$budget" -b 1 --prefetch-depth 0 --cache-policy $policy --trace-out t.jsonl --stats-json t.json \
		>/dev/null 2>err
	slots=$(py -c 'import json, sys; print(json.load(open(sys.argv[1]))["experts"]["slots"])' t.json)
	"$MOE_BENCH" sim --trace t.jsonl --cache-experts "$slots" --policy $policy,belady >sim.txt 2>err
	check "sim $policy = the cache's hits and misses" py -c '
import json, sys
x = json.load(open(sys.argv[1]))["experts"]
rows = [l.split() for l in open(sys.argv[2]) if l.split() and l.split()[0].isdigit()]
got = {r[1]: (int(r[3]), int(r[4])) for r in rows}
assert got[sys.argv[3]] == (x["hits"], x["misses"]), (got, x)
assert got["belady"][0] >= got[sys.argv[3]][0], got' t.json sim.txt $policy
done

# pin lists: moe-bench profile counts a trace's uses (checked against a count of
# the trace here) and lists the most used; the cache holds them for good, as many
# as leave two slots to the policy, and the simulator pinning the same list gives
# the cache's hits and misses exactly
check "profile" "$MOE_BENCH" profile --trace t.jsonl --experts 50% -o pins.txt
check "profile = the trace's counts, most used first" py -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
E = rows[0]["experts"]
uses = {}
for r in rows[1:]:
    for e in r["experts"]:
        uses[(r["layer"], e)] = uses.get((r["layer"], e), 0) + 1
want = sorted(((-u, l * E + e) for (l, e), u in uses.items()))
got = [tuple(map(int, l.split())) for l in open(sys.argv[2]) if not l.startswith("#")]
assert len(got) == rows[0]["layers"] * E // 2, len(got)
assert [(l, e, u) for l, e, u in got[:len(want)]] == [(i // E, i % E, -u) for u, i in want][:len(got)], got[:5]' \
	t.jsonl pins.txt
run --no-offload -b 1 --logits-out refb1.f32 >/dev/null 2>err
for policy in lru next; do
	run --ram-budget "$budget" -b 1 --prefetch-depth 0 --cache-policy $policy --pin pins.txt --trace-out tp.jsonl \
		--stats-json tp.json --logits-out got.f32 >got.ids 2>err
	check "pinned, $policy: the mapped run's logits" cmp refb1.f32 got.f32
	slots=$(py -c 'import json, sys; print(json.load(open(sys.argv[1]))["experts"]["slots"])' tp.json)
	"$MOE_BENCH" sim --trace tp.jsonl --cache-experts "$slots" --policy $policy --pin pins.txt >sim.txt 2>err
	check "sim $policy with the pin list = the cache's hits, misses and pinned slots" py -c '
import json, sys
x = json.load(open(sys.argv[1]))["experts"]
row = [l.split() for l in open(sys.argv[2]) if l.split() and l.split()[0].isdigit()][0]
listed = sum(1 for l in open(sys.argv[3]) if not l.startswith("#"))
assert x["slots_pinned"] == min(listed, x["slots"] - 2) == int(row[2]) > 0, (x, row)
assert (int(row[3]), int(row[4])) == (x["hits"], x["misses"]), (row, x)' tp.json sim.txt pins.txt
done
printf '0 1\n9 0\n' >badpin.txt
expect_error "a pin list naming a layer the model lacks" "badpin.txt:2" run --ram-budget "$budget" --pin badpin.txt
printf '0 1\n0 one\n' >badpin.txt
expect_error "a malformed pin list line" "badpin.txt:2" run --ram-budget "$budget" --pin badpin.txt
printf '# top\n0 1 5\n0 1 4\n' >badpin.txt
expect_error "an expert pinned twice" "badpin.txt:3" run --ram-budget "$budget" --pin badpin.txt
expect_error "a pin list without the cache" "--no-offload" run --no-offload --pin pins.txt

# --routes-from: a model routed by a trace of its own run (-b 1) takes the same routes;
# a deeper model (the 4 layers replayed onto 9) takes the trace's experts, mapped, at
# every layer; the cache then streams them under a budget
run --no-offload -b 1 --trace-out own.jsonl >/dev/null 2>err
run --no-offload -b 1 --routes-from own.jsonl --trace-out again.jsonl >/dev/null 2>err
check "replayed routes = the recorded ones" py -c '
import json, sys
a, b = ([json.loads(l)["experts"] for l in open(f)][1:] for f in sys.argv[1:])
assert a == b, next(i for i in range(len(a)) if a[i] != b[i])' own.jsonl again.jsonl
check "synth 9 layers" "$MOE_PACK" synth --hidden 512 --expert-ff 4096 --layers 9 --vocab 512 m9.moe
"$MOE_RUN" -m m9.moe --tokens $P -n 24 -c 256 -b 1 --ram-budget "$budget" --routes-from own.jsonl \
	--trace-out deep.jsonl --stats-json deep.json >/dev/null 2>err
check "9 layers: every layer's experts come from the trace's, as moe_replay_route maps them" py -c '
import json, sys
own = [json.loads(l) for l in open(sys.argv[1])][1:]
deep = [json.loads(l) for l in open(sys.argv[2])][1:]
by_layer = {}
for r in own:
    by_layer.setdefault(r["layer"], []).append(r["experts"])
T, E = 4, 8
count = {}
for r in deep:
    l = r["layer"]; k = count.get(l, 0); count[l] = k + 1
    g, uses = l // T, by_layer[l % T]
    want, out = uses[(k + 7919 * g) % len(uses)], []
    for e in want:
        e = (e + g) % E
        while e in out:
            e = (e + 1) % E
        out.append(e)
    assert r["experts"] == out, (l, k, r["experts"], out)
assert len(count) == 9 and all(c == 35 for c in count.values()), count  # 12 prompt + 23 decoded' own.jsonl deep.jsonl
check "9 layers: streamed under the budget" py -c '
import json, sys; x = json.load(open(sys.argv[1]))["experts"]; assert x["misses"] > x["slots"], x' deep.json
echo '{"trace": "x", "layers": 4, "experts": 8}' >bad.jsonl
echo '{"token": 0, "layer": 9, "experts": [1]}' >>bad.jsonl
expect_error "a bad trace" "bad.jsonl:2: not a moe-run --trace-out line" run --routes-from bad.jsonl
printf '{"layers": 4000000000, "experts": 8}\n{"token": 0, "layer": 0, "experts": [1]}\n' >huge.jsonl
expect_error "a trace header of absurd size" "huge.jsonl:1: a trace of 4000000000 layers" "$MOE_BENCH" sim --trace huge.jsonl

# refused
expect_error "budget below the minimum" "below the minimum" run --ram-budget 1M
expect_error "bad budget" "a size such as" run --ram-budget 12X
expect_error "bad policy" "lru, lfu or next" run --cache-policy fifo
expect_error "bad io depth" "--io-depth" run --io-depth 0
# a flipped byte in an expert blob: the read that brings it in says which
py -c '
import sys; sys.path.insert(0, sys.argv[1])
from moepack_ref import Pack
p = Pack("m.moe"); x = p.experts[(2, 5)]
b = bytearray(p.data); b[x["offset"] + 1000] ^= 0x10
open("bad.moe", "wb").write(b)' "$TESTS_DIR"
expect_error "corrupt expert" "layer 2 expert 5: checksum mismatch" \
	"$MOE_RUN" -m bad.moe --tokens $P -n 24 -c 256 --ram-budget 1G
check "--no-verify runs it anyway" "$MOE_RUN" -m bad.moe --tokens $P -n 2 -c 256 --ram-budget 1G --no-verify
# injected faults on the read path (MOE_IO_FAULT): the 5th read completing
for engine in io_uring pread; do
	io=""
	[ $engine = pread ] && io=pread
	MOE_IO=$io MOE_IO_FAULT=eio@5 expect_error "$engine: EIO" "expert [0-9]*: read: Input/output error" \
		run --ram-budget "$budget"
	MOE_IO=$io MOE_IO_FAULT=short@5 expect_error "$engine: short read" "expert [0-9]*: short read: " run --ram-budget "$budget"
	# a byte flipped in flight: the checksum catches it, one re-read heals it, same bits
	MOE_IO=$io MOE_IO_FAULT=flip@5 run --ram-budget "$budget" --logits-out flip.f32 --stats-json flip.json >flip.ids 2>err
	check "$engine: transient corruption re-read" cmp ref.f32 flip.f32
	check "$engine: the re-read counted" py -c 'import json, sys; assert json.load(open(sys.argv[1]))["experts"]["rereads"] == 1' flip.json
done
finish
