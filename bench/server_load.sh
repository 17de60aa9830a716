#!/bin/sh
# bench/server_load.sh - moe-server under 1, 2, 4 and 8 concurrent clients, each
# client a stream of greedy completions of its own prompt (max_tokens TOKENS), with
# --parallel equal to the clients, so their decode steps run as one batch. Per
# level: requests/s and generated tokens/s of the whole server, the sequences per
# decode step, and the expert bytes read from disk per generated token, from
# /metrics before and after; the median of RUNS rounds of REQUESTS requests per
# client. --ram-budget is the dense weights + every slot's KV cache and scratch +
# CACHE, so the expert cache is the same at every level and what changes is how
# many sequences each expert read serves.
# Usage: bench/server_load.sh PACK CACHE [TOKENS] [REQUESTS] [RUNS]   (a built tree; curl)
set -eu
cd "$(dirname "$0")/.."
PACK=$1 CACHE=$2 TOKENS=${3:-64} REQUESTS=${4:-4} RUNS=${5:-3}
W=$(mktemp -d)
trap 'if [ -n "$PID" ]; then kill $PID 2>/dev/null; fi; rm -rf "$W"' EXIT
PID=
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | sed -n "s/^$1 //p"; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
./moe-run -m "$PACK" --tokens 1 -n 0 -c 256 --no-offload --stats-json "$W/sizes.json" >/dev/null 2>&1
eval "$(/usr/bin/python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print("DENSE=%d SESSION=%d" % (s["resident_bytes"], s["session_bytes"]))' "$W/sizes.json")"
CACHE_B=$(/usr/bin/python3 -c 'import sys; s = sys.argv[1]; m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}; print(int(float(s[:-1]) * m[s[-1]]) if s[-1] in m else int(s))' "$CACHE")
echo "moe-server on $PACK, expert cache $CACHE (--ram-budget = dense $DENSE + slots x $SESSION + cache), $TOKENS tokens per request, $REQUESTS requests per client, median of $RUNS"
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name.*: //p' /proc/cpuinfo | head -1)"
printf '%8s %10s %10s %12s %14s\n' clients 'req/s' 'tok/s' 'seqs/step' 'MB read/tok'
for N in 1 2 4 8; do
	BUDGET=$((DENSE + N * SESSION + CACHE_B))
	./moe-server -m "$PACK" --port 0 --parallel $N --queue 64 -c 256 --ram-budget "$BUDGET" 2>"$W/srv.log" &
	PID=$!
	PORT=
	while [ -z "$PORT" ]; do
		sleep 0.1
		PORT=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\):.*|\1|p' "$W/srv.log")
		kill -0 $PID 2>/dev/null || { cat "$W/srv.log"; exit 1; }
	done
	: >"$W/rounds"
	for r in $(seq "$RUNS"); do
		t0=$(date +%s.%N) g0=$(metric moe_generated_tokens_total) b0=$(metric moe_expert_bytes_read_total)
		s0=$(metric moe_decode_batches_total) w0=$(metric moe_decode_batch_rows_total)
		clients=
		for c in $(seq $N); do
			(for q in $(seq "$REQUESTS"); do
				curl -s -d "{\"prompt\": \"And the LORD said unto $c $q $r\", \"max_tokens\": $TOKENS, \"temperature\": 0}" \
					"http://127.0.0.1:$PORT/v1/completions" >/dev/null
			done) &
			clients="$clients $!"
		done
		for p in $clients; do wait "$p"; done
		t1=$(date +%s.%N) g1=$(metric moe_generated_tokens_total) b1=$(metric moe_expert_bytes_read_total)
		s1=$(metric moe_decode_batches_total) w1=$(metric moe_decode_batch_rows_total)
		echo "$t0 $t1 $g0 $g1 $b0 $b1 $s0 $s1 $w0 $w1" | awk -v n=$((N * REQUESTS)) '{
			t = $2 - $1; printf "%.4f %.2f %.4f %.4f\n", n / t, ($4 - $3) / t, ($10 - $9) / ($8 - $7), ($6 - $5) / ($4 - $3) / 1e6 }' >>"$W/rounds"
	done
	kill $PID
	wait $PID 2>/dev/null || true
	PID=
	printf '%8d %10.2f %10.1f %12.2f %14.3f\n' $N "$(cut -d' ' -f1 "$W/rounds" | median)" \
		"$(cut -d' ' -f2 "$W/rounds" | median)" "$(cut -d' ' -f3 "$W/rounds" | median)" "$(cut -d' ' -f4 "$W/rounds" | median)"
done
