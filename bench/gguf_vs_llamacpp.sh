#!/bin/sh
# bench/gguf_vs_llamacpp.sh - one GGUF, in RAM, moemap against llama.cpp in the same
# run: the GGUF is packed (its blocks kept), then ROUNDS alternating runs of
# llama-bench (-p P, then -n N -d P, one repetition each) and moe-run (the same P
# prompt tokens in batches of up to 64, then N decoded), same threads. Prints each
# round, the medians, and moemap's ratio to llama.cpp. llama.cpp is the peer, not a
# dependency: give its llama-bench.
# Both run from a mapped file already in RAM: llama-bench maps the GGUF and times
# runs after a warm-up; moe-run gets --no-offload, which maps the pack and faults it
# in at open, before the clock starts. (With the expert cache instead, moe-run's first
# prompt would also read every expert from disk: that is the cold start, not the
# kernels.) RUN_ARGS replaces --no-offload, e.g. RUN_ARGS= for the expert cache. BATCH
# sets moe-run's -b (default: P, at most 64).
# MOE_KERNEL=avx2 runs moemap's AVX2 kernels on an AVX-512 machine (build llama.cpp
# with -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF to match).
# Usage: LLAMA_BENCH=/path/to/llama-bench bench/gguf_vs_llamacpp.sh MODEL.gguf [ROUNDS] [P] [N] [THREADS]
set -eu
cd "$(dirname "$0")/.."
: "${LLAMA_BENCH:?set LLAMA_BENCH to llama.cpp's llama-bench}"
GGUF=$1 ROUNDS=${2:-5} P=${3:-64} N=${4:-16} T=${5:-2}
RUN_ARGS=${RUN_ARGS---no-offload}
B=${BATCH:-$((P < 64 ? P : 64))} # moe-run's -b (BATCH, default up to 64); llama-bench's default is 512
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
./moe-pack --no-progress "$GGUF" "$W/m.moe" >/dev/null
./moe-pack --info "$W/m.moe" | sed -n '/^expert blob/,$p'
TOK=$(/usr/bin/python3 -c "print(','.join(str((i * 7919) % 30000 + 10) for i in range($P)))")
# one untimed run first, as llama-bench warms up: the pack was just written
./moe-run -m "$W/m.moe" --tokens "$TOK" -n 1 -b "$B" -t "$T" $RUN_ARGS >/dev/null 2>&1
for r in $(seq "$ROUNDS"); do
	# prefill of P tokens, then N tokens decoded after them (-d P: at the depth where
	# moe-run decodes, not from an empty context)
	"$LLAMA_BENCH" -m "$GGUF" -t "$T" -p "$P" -n 0 -r 1 -o json 2>/dev/null >"$W/l$r.json"
	"$LLAMA_BENCH" -m "$GGUF" -t "$T" -p 0 -n "$N" -d "$P" -r 1 -o json 2>/dev/null >"$W/ld$r.json"
	./moe-run -m "$W/m.moe" --tokens "$TOK" -n "$N" -b "$B" -t "$T" --ignore-eos --stats-json "$W/m$r.json" \
		$RUN_ARGS >/dev/null 2>&1
done
/usr/bin/python3 - "$W" "$ROUNDS" "$P" "$N" "$T" <<'PY'
import json, statistics, sys
w, rounds, p, n, t = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
lp, lt, mp, mt = [], [], [], []
for r in range(1, rounds + 1):
    lp += [row["avg_ts"] for row in json.load(open("%s/l%d.json" % (w, r)))]
    lt += [row["avg_ts"] for row in json.load(open("%s/ld%d.json" % (w, r)))]
    s = json.load(open("%s/m%d.json" % (w, r)))
    mp.append(s["prefill_tokens_per_second"])
    mt.append(s["decode_tokens_per_second"])
    print("round %d: llama.cpp pp%s %.2f tg%s %.2f | moemap prefill %.2f decode %.2f (%s)" % (
        r, p, lp[-1], n, lt[-1], mp[-1], mt[-1], s["kernels"]))
m = statistics.median
print("median of %d, %s threads: prefill %.2f vs %.2f t/s (x%.2f), decode %.2f vs %.2f t/s (x%.2f) [moemap vs llama.cpp]"
      % (rounds, t, m(mp), m(lp), m(mp) / m(lp), m(mt), m(lt), m(mt) / m(lt)))
PY
