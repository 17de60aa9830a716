#!/bin/sh
# bench/zstd_ratio.sh - what zstd achieves on quantized expert blobs. Every frame is kept
# (--zstd-min-saving 0) so the ratio is zstd's own; --info --json reports stored/raw.
# Usage: bench/zstd_ratio.sh [WORKDIR]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$top/build/bench}
mkdir -p "$work"
printf '%-16s %-5s %-6s %10s %9s\n' model quant level ratio seconds
for model in "mixtral-8x7b --layers 1" "qwen3-30b-a3b --layers 2" "deepseek-v3 --layers 4 --experts 32"; do
	name=${model%% *}
	for quant in q8 q4; do
		for level in 1 3 9; do
			t0=$(date +%s.%N)
			"$top/moe-pack" synth --force --no-progress --preset $model -q "$quant" \
				--zstd-level "$level" --zstd-min-saving 0 "$work/z.moe" >/dev/null
			t1=$(date +%s.%N)
			ratio=$("$top/moe-pack" --info --json "$work/z.moe" |
				/usr/bin/python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["kinds"]["experts"]["ratio"])')
			printf '%-16s %-5s %-6s %10s %9.1f\n' "$name" "$quant" "$level" "$ratio" "$(awk "BEGIN { print $t1 - $t0 }")"
		done
	done
done
rm -f "$work/z.moe"
