#!/bin/sh
# bench/offload.sh - a model larger than the memory it may use: moemap's expert cache
# under --ram-budget against experts through mmap (llama.cpp's way), both inside the
# same memory cgroup, and the same model with room for everything as the in-RAM
# reference. Prints the O_DIRECT read bandwidth of the pack's disk (the bound),
# then per run: decode tok/s and the expert figures of --stats.
# Needs root (cgroup v1 memory controller, drop_caches). Run from a built tree.
# Usage: bench/offload.sh PACK BUDGET CGROUP_LIMIT [DECODE_TOKENS] [RUNS]
#   e.g. bench/offload.sh mixtral-4l-q4.moe 1500M 1700M 33 3
set -eu
cd "$(dirname "$0")/.."
PACK=$1 BUDGET=$2 LIMIT=$3 N=${4:-33} RUNS=${5:-3}
CG=/sys/fs/cgroup/memory/moebench
mkdir -p "$CG"
echo "$LIMIT" >"$CG/memory.limit_in_bytes"
PROMPT=$(seq 100 131 | paste -sd,) # 32 prompt tokens
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
incg() { sh -c 'echo $$ >'"$CG"'/tasks; exec "$@"' sh "$@"; }
drop
bw=$(dd if="$PACK" of=/dev/null bs=4M count=512 iflag=direct 2>&1 | sed -n 's/.*, \([0-9.]*\) \([GM]B\)\/s$/\1 \2\/s/p')
echo "O_DIRECT read of the pack (4 MiB blocks, 2 GiB): $bw"
echo "pack: $(du -h "$PACK" | cut -f1); budget $BUDGET; cgroup memory limit $LIMIT"
one() { # one LABEL IN_CGROUP ARGS...
	label=$1 cg=$2
	shift 2
	for r in $(seq "$RUNS"); do
		drop
		if [ "$cg" = yes ]; then
			incg timeout 600 ./moe-run -m "$PACK" --tokens "$PROMPT" -n "$N" --ignore-eos --stats "$@" >/dev/null 2>"/tmp/offload.$$" || true
		else
			timeout 600 ./moe-run -m "$PACK" --tokens "$PROMPT" -n "$N" --ignore-eos --stats "$@" >/dev/null 2>"/tmp/offload.$$" || true
		fi
		echo "$label run $r: $(tr '\n' ' ' <"/tmp/offload.$$")"
		echo "  peak memory of the cgroup: $(($(cat "$CG/memory.max_usage_in_bytes") / 1048576)) MiB"
		echo 0 >"$CG/memory.max_usage_in_bytes"
	done
}
one "in RAM (room for every expert)" no --ram-budget 8G
for d in 0 1 2; do
	one "expert cache, --ram-budget $BUDGET, --prefetch-depth $d" yes --ram-budget "$BUDGET" --prefetch-depth "$d"
done
RUNS=1 one "mmap experts (page cache), cgroup $LIMIT, 600 s cap" yes --no-offload
rm -f "/tmp/offload.$$"
