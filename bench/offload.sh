#!/bin/sh
# bench/offload.sh - decoding a model whose experts do not fit: moemap's expert cache
# under --ram-budget = dense weights + KV cache + 100 %, 50 % and 25 % of the
# experts' bytes, each run inside a cgroup-v1 memory limit of budget + 64 MiB (code
# and libraries), next to experts through mmap (--no-offload) in the same limit.
# Each budget line gives decode tok/s (median of RUNS), bytes read per token, hit
# rate, prefetch precision/recall and the physical bound measured in the same run:
#   bound tok/s = 1 / max(memory time, disk time)
#   memory time = weight bytes a token reads / moe-bench membw (2 threads)
#   disk time   = expert bytes missed per token / moe-bench diskbw (depth 8)
# The disk is measured before a budget's runs (median of 3) and again after each
# policy's runs: a VM's disk can vary 2x within minutes, and the bound with it.
# POLICIES (default lru) lists the --cache-policy values to run at each budget, PCTS
# (default "100 50 25") the budgets. Needs root (cgroup, drop_caches). Run from a
# built tree.
# RUN_ARGS adds moe-run options to every run (e.g. "--routes-from TRACE"); MMAP=0
# skips the --no-offload runs. LLAMA_CPP (a built llama.cpp tree) and GGUF (the GGUF
# the pack was made from) add llama.cpp's decode in the same limit.
# Usage: [POLICIES="lru next"] [PCTS="50 25"] [RUN_ARGS=...] [MMAP=0] bench/offload.sh PACK [DECODE_TOKENS] [RUNS]
set -eu
cd "$(dirname "$0")/.."
PACK=$1 N=${2:-33} RUNS=${3:-3} POLICIES=${POLICIES:-lru} PCTS=${PCTS:-100 50 25} RUN_ARGS=${RUN_ARGS:-} MMAP=${MMAP:-1}
CG=/sys/fs/cgroup/memory/moebench
mkdir -p "$CG"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PROMPT=$(seq 100 131 | paste -sd,) # 32 prompt tokens
CTX=512
# page cache dropped, and the cgroup's peak counter restarted from what is left
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; echo 0 >"$CG/memory.max_usage_in_bytes"; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

./moe-pack --info --json "$PACK" >"$W/info.json"
./moe-run -m "$PACK" --tokens 1 -n 0 -c $CTX --no-offload --stats-json "$W/sizes.json" >/dev/null 2>&1
eval "$(/usr/bin/python3 - "$W/info.json" "$W/sizes.json" <<'PY'
import json, sys
info, sizes = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
k = info["kinds"]
experts = k["experts"]["raw_bytes"]
blob = info["expert_layout"]["raw_blob_bytes"]
# weights one decoded token reads: everything dense but the embedding table, plus its experts
dense_per_token = sum(v["raw_bytes"] for n, v in k.items() if n not in ("experts", "embed"))
# the experts a token uses: top-k in each layer that has experts (DeepSeek's first
# layers are dense)
meta = info["metadata"]
moe_layers = round(experts / (blob * int(meta["hparams.n_experts"])))
print("EXPERTS=%d BLOB=%d BASE=%d DENSE_TOKEN=%d LK=%d" % (experts, blob, sizes["resident_bytes"] + sizes["session_bytes"],
                                                         dense_per_token, moe_layers * int(meta["hparams.n_experts_used"])))
PY
)"
TOKEN_BYTES=$((DENSE_TOKEN + LK * BLOB))
echo "pack $PACK: experts $((EXPERTS / 1048576)) MiB (blob $((BLOB / 1048576)) MiB); dense + KV($CTX) + scratch $((BASE / 1048576)) MiB; a token reads $((TOKEN_BYTES / 1048576)) MiB of weights"

for pct in $PCTS; do
	budget=$((BASE + EXPERTS / 100 * pct))
	limit=$((budget + 64 * 1048576))
	echo "$limit" >"$CG/memory.limit_in_bytes"
	# the bounds, in this run
	mbw=$(./moe-bench membw --memory 1G --reps 5 | awk '/threads 2:/ {print $3}')
	dbw=$(for i in 1 2 3; do ./moe-bench diskbw --file "$PACK" --depth 8 --gib 1 | awk '/depth/ {print $3}'; done | median)
	for policy in $POLICIES; do
	for r in $(seq "$RUNS"); do
		drop
		sh -c 'echo $$ >'"$CG"'/tasks; exec "$@"' sh timeout 900 ./moe-run -m "$PACK" --tokens "$PROMPT" -n "$N" \
			-c $CTX --ignore-eos --ram-budget "$budget" --cache-policy "$policy" $RUN_ARGS --stats-json "$W/r$r.json" \
			>/dev/null 2>"$W/err" || cat "$W/err"
		cat "$CG/memory.max_usage_in_bytes" >"$W/peak$r"
	done
	dbw_after=$(./moe-bench diskbw --file "$PACK" --depth 8 --gib 1 | awk '/depth/ {print $3}')
	/usr/bin/python3 - "$W" "$RUNS" "$pct" "$budget" "$limit" "$mbw" "$dbw" "$TOKEN_BYTES" "$policy" "$dbw_after" <<'PY'
import json, statistics, sys
w, runs, pct, budget, limit, mbw, dbw, token_bytes, policy, dbw_after = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
budget, limit, mbw, dbw, token_bytes = int(budget), int(limit), float(mbw), float(dbw), int(token_bytes)
dbw_after = float(dbw_after)
rows = []
for r in range(1, runs + 1):
    s = json.load(open("%s/r%d.json" % (w, r)))
    x, pt = s["experts"], s["per_token"]
    n = len(pt)
    read = sum(t["bytes_read"] for t in pt) / n
    uses = sum(t["hits"] + t["prefetch_hits"] + t["misses"] for t in pt)
    hit = sum(t["hits"] + t["prefetch_hits"] for t in pt) / uses
    peak = int(open("%s/peak%d" % (w, r)).read())
    rows.append((s["decode_tokens_per_second"], read, hit, x["prefetch_precision"], x["prefetch_recall"], peak))
tps = statistics.median(r[0] for r in rows)
read = statistics.median(r[1] for r in rows)
mem_t, disk_t = token_bytes / (mbw * 1e9), read / (dbw * 1e9)
bound = 1 / max(mem_t, disk_t)
print("budget %3s%% of experts (%d MiB, cgroup %d MiB), --cache-policy %s: decode %s tok/s (median %.2f); "
      "read %.0f MiB/token; hit rate %.2f; prefetch precision %.2f recall %.2f; peak %d MiB" % (
          pct, budget >> 20, limit >> 20, policy, ", ".join("%.2f" % r[0] for r in rows), tps, read / 2**20,
          statistics.median(r[2] for r in rows), statistics.median(r[3] for r in rows),
          statistics.median(r[4] for r in rows), max(r[5] for r in rows) >> 20))
print("  bound: memory %.1f ms (%.1f GB/s), disk %.1f ms (%.2f GB/s) -> %.2f tok/s; measured = %.0f %% of the bound" % (
    mem_t * 1e3, mbw, disk_t * 1e3, dbw, bound, 100 * tps / bound))
bound_after = 1 / max(mem_t, read / (dbw_after * 1e9))
print("  the disk after these runs: %.2f GB/s -> %.2f tok/s; measured = %.0f %% of that bound" % (
    dbw_after, bound_after, 100 * tps / bound_after))
PY
	done
	# the baseline in the same limit: experts through mmap and the page cache
	[ "$MMAP" = 1 ] || continue
	drop
	sh -c 'echo $$ >'"$CG"'/tasks; exec "$@"' sh timeout 600 ./moe-run -m "$PACK" --tokens "$PROMPT" -n "$N" \
		-c $CTX --ignore-eos --no-offload $RUN_ARGS --stats-json "$W/m.json" >/dev/null 2>"$W/err" && st=ok || st="exit $?"
	/usr/bin/python3 -c '
import json, sys
try:
    s = json.load(open(sys.argv[1])); print("  --no-offload in the same limit: decode %.2f tok/s (%s)" % (s["decode_tokens_per_second"], sys.argv[2]))
except Exception:
    print("  --no-offload in the same limit: no result (%s; 124 = 600 s timeout, 137 = killed for memory)" % sys.argv[2])' \
		"$W/m.json" "$st"
	echo "  (its peak in the cgroup: $(($(cat "$CG/memory.max_usage_in_bytes") / 1048576)) MiB)"
	rm -f "$W/m.json"
	# llama.cpp on the same weights in the same limit, straight from the mapped file
	# (bench/llama_mmap_decode.c: no repacking into anonymous memory, which would not
	# fit), the same 32 prompt ids, then N tokens
	[ -n "${LLAMA_CPP:-}" ] && [ -n "${GGUF:-}" ] || continue
	[ -x "$W/lmd" ] || cc -O2 -o "$W/lmd" bench/llama_mmap_decode.c -I"$LLAMA_CPP/include" -I"$LLAMA_CPP/ggml/include" \
		-L"$LLAMA_CPP/build/bin" -lllama -Wl,-rpath,"$LLAMA_CPP/build/bin"
	drop
	if sh -c 'echo $$ >'"$CG"'/tasks; exec "$@"' sh timeout 3600 "$W/lmd" "$GGUF" "$N" 2 >"$W/l.txt" 2>"$W/err"; then
		echo "  llama.cpp (mmap, no repacking) in the same limit: $(cat "$W/l.txt")"
	else
		echo "  llama.cpp in the same limit: no result ($(tail -1 "$W/err"))"
	fi
	echo "  (its peak in the cgroup: $(($(cat "$CG/memory.max_usage_in_bytes") / 1048576)) MiB)"
done
