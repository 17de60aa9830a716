#!/bin/sh
# bench/zstd_vs_raw.sh - the same experts stored raw and zstd-compressed, decoded
# under the same --ram-budget, against the disk's bound measured in the same run.
# usage: bench/zstd_vs_raw.sh RAW.moe ZSTD.moe BUDGET [RUNS] [MOE_RUN]
# Make the packs with, e.g.:
#   moe-pack synth --preset mixtral-8x7b --layers 2 -q experts=q4,attn=q8 --zstd-min-saving 100 raw.moe
#   moe-pack synth --preset mixtral-8x7b --layers 2 -q experts=q4,attn=q8 --zstd-min-saving 1 zstd.moe
set -eu
raw=$1 zst=$2 budget=$3 runs=${4:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
run=${5:-$here/moe-run}
bench=$here/moe-bench
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "disk: $("$bench" diskbw --file "$raw" --depth 8 2>&1 | tail -1)"
for pack in "$raw" "$zst"; do
	rates=""
	for i in $(seq "$runs"); do
		[ -w /proc/sys/vm/drop_caches ] && sync && echo 3 >/proc/sys/vm/drop_caches
		line=$(timeout 300 "$run" -m "$pack" --ram-budget "$budget" --tokens 1,2,3 -n 16 --stats 2>&1 >/dev/null) ||
			{ echo "$pack run $i: no answer after 300 s"; continue; }
		tps=$(echo "$line" | sed -n 's/.*decode [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s.*/\1/p')
		gbs=$(echo "$line" | sed -n 's/.*read [0-9.]* GB at \([0-9.]*\) GB\/s.*/\1/p')
		rates="$rates $tps"
		echo "$pack run $i: $tps tok/s, reads $gbs GB/s"
	done
	echo "$pack: median $(echo $rates | tr ' ' '\n' | median) tok/s ($rates)"
done
