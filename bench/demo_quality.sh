#!/bin/sh
# bench/demo_quality.sh - quality and routing of the trained demo model (models/kjv-moe)
# on its held-out text (chapters never trained on), for bench/RESULTS.md:
#  1. perplexity of f32, q8 and q4 packs over the whole held-out text in chunks of 256
#     tokens (the training context), and each pack's mean KL divergence and top-1
#     agreement against the f32 pack with an f32 KV cache (moe-run --perplexity --kl-base);
#  2. from a route trace of the q8 pack over the held-out text (-b 1): the share of routes each
#     expert of each layer gets, and the hit rates of LRU, LFU and Belady's bound replayed
#     at 25, 50 and 75 % of the experts (moe-bench sim);
#  3. the prefetcher at depths 0-3, token by token (-b 1, as decoding runs) over the first
#     ROUTING_CHARS of the held-out text, with the expert cache at 50 % of the experts:
#     precision, recall, hit rate, misses per token (moe-run --perplexity --stats-json).
#     Cache counts come from the last of RUNS runs; tok/s is the median of the RUNS, next
#     to the same text with every expert mapped (--no-offload), the bound.
# Run from a built tree. Usage: bench/demo_quality.sh [ROUTING_CHARS] [RUNS]
set -eu
cd "$(dirname "$0")/.."
D=models/kjv-moe
H=$D/heldout.txt
CHARS=${1:-40000}
RUNS=${2:-3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PY=/usr/bin/python3

for q in f32 q8 q4; do
	./moe-pack --no-progress --force -q "$q" "$D" "$W/kjv-$q.moe" >/dev/null
done
echo "## perplexity over $H ($(wc -c <"$H") bytes), -c 256"
echo "| pack | KV cache | perplexity | mean KL vs f32 | top-1 agreement | pack MB |"
echo "|---|---|---|---|---|---|"
./moe-run -m "$W/kjv-f32.moe" --perplexity "$H" -c 256 --kv-type f32 --logits-out "$W/base.f32" >"$W/p.txt"
size() { stat -c %s "$1" | awk '{printf "%.1f", $1 / 1e6}'; }
awk -v mb="$(size "$W/kjv-f32.moe")" '/^perplexity/ {printf "| f32 | f32 | %s | (base) | | %s |\n", $2, mb}' "$W/p.txt"
for run in "f32 f16" "q8 f16" "q4 f16" "q8 f32"; do
	set -- $run
	./moe-run -m "$W/kjv-$1.moe" --perplexity "$H" -c 256 --kv-type "$2" --kl-base "$W/base.f32" >"$W/p.txt"
	awk -v q="$1" -v kv="$2" -v mb="$(size "$W/kjv-$1.moe")" '/^perplexity/ {p = $2} /^mean KL/ {kl = $3; sub(/,$/, "", kl); a = $6}
		END {printf "| %s | %s | %s | %s | %s | %s |\n", q, kv, p, kl, a, mb}' "$W/p.txt"
done
rm -f "$W/base.f32"

# routes of the whole held-out text, token by token (-b 1) as decoding meets them: a
# trace of prompt batches lists each layer's tokens together, as the cache sees them then
./moe-run -m "$W/kjv-q8.moe" --perplexity "$H" -c 256 -b 1 --no-offload --trace-out "$W/routes.jsonl" >/dev/null
echo
echo "## expert usage per layer (share of the top-2 routes, %; q8 pack, whole held-out text)"
$PY - "$W/routes.jsonl" <<'PY'
import json, math, sys
lines = open(sys.argv[1]).read().splitlines()
head = json.loads(lines[0])
L, E = head["layers"], head["experts"]
count = [[0] * E for _ in range(L)]
for line in lines[1:]:
    r = json.loads(line)
    for e in r["experts"]:
        count[r["layer"]][e] += 1
print("| layer | " + " | ".join("e%d" % e for e in range(E)) + " | max/min | entropy (bits, max %.0f) |" % math.log2(E))
print("|---" * (E + 3) + "|")
for l in range(L):
    n = sum(count[l])
    p = [c / n for c in count[l]]
    h = -sum(x * math.log2(x) for x in p if x)
    print("| %d | " % l + " | ".join("%.1f" % (100 * x) for x in p) +
          " | %.1f | %.2f |" % (max(count[l]) / max(1, min(count[l])), h))
PY
echo
echo "## cache policies replayed from that trace (moe-bench sim)"
./moe-bench sim --trace "$W/routes.jsonl" --cache-experts 25%,50%,75%

# the prefetcher, decoding token by token with half the experts' bytes as cache
head -c "$CHARS" "$H" >"$W/part.txt"
./moe-pack --info --json "$W/kjv-q8.moe" >"$W/info.json"
./moe-run -m "$W/kjv-q8.moe" --tokens 1 -n 0 -c 256 --no-offload --stats-json "$W/sizes.json" >/dev/null 2>&1
BUDGET=$($PY - "$W/info.json" "$W/sizes.json" <<'PY'
import json, sys
info, sizes = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(sizes["resident_bytes"] + sizes["session_bytes"] + info["kinds"]["experts"]["raw_bytes"] // 2)
PY
)
echo
echo "## prefetch depth, -b 1 over the first $CHARS bytes of held-out text, --ram-budget $BUDGET (experts cache = 50 %)"
echo "| depth | precision | recall | hit rate | misses/token | MB read/token | tok/s (runs) | median tok/s |"
echo "|---|---|---|---|---|---|---|---|"
for depth in 0 1 2 3; do
	for r in $(seq "$RUNS"); do
		./moe-run -m "$W/kjv-q8.moe" --perplexity "$W/part.txt" -c 256 -b 1 --ram-budget "$BUDGET" \
			--prefetch-depth "$depth" --stats-json "$W/s$depth.$r.json" >/dev/null
	done
	$PY - "$depth" "$W"/s"$depth".*.json <<'PY'
import json, statistics, sys
runs = [json.load(open(f)) for f in sys.argv[2:]]
s = runs[-1]
x, n = s["experts"], s["tokens"]
tps = [r["tokens_per_second"] for r in runs]
print("| %s | %.3f | %.3f | %.3f | %.2f | %.2f | %s | %.0f |" % (
    sys.argv[1], x["prefetch_precision"], x["prefetch_recall"], (x["hits"] + x["prefetch_hits"]) / x["uses"],
    x["misses"] / n, x["bytes_read"] / n / 1e6, ", ".join("%.0f" % t for t in tps), statistics.median(tps)))
PY
done
for r in $(seq "$RUNS"); do
	./moe-run -m "$W/kjv-q8.moe" --perplexity "$W/part.txt" -c 256 -b 1 --no-offload --stats-json "$W/m.$r.json" >/dev/null
done
$PY - "$W"/m.*.json <<'PY'
import json, statistics, sys
tps = [json.load(open(f))["tokens_per_second"] for f in sys.argv[1:]]
print("| all experts mapped (--no-offload) | | | 1 | 0 | 0 | %s | %.0f |" % (", ".join("%.0f" % t for t in tps),
                                                                      statistics.median(tps)))
PY
