#!/bin/sh
# bench/pack_memory.sh - peak RSS of moe-pack on a Mixtral-8x7B-shaped safetensors model
# larger than 4 GB (real layer shapes: hidden 4096, experts 14336 wide, vocab 32000;
# 2 layers of 8 experts). Usage: bench/pack_memory.sh [WORKDIR] [QUANT]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$top/build/bench}
quant=${2:-q8}
mkdir -p "$work"
src=$work/mixtral-8x7b-2l
if [ ! -d "$src" ]; then
	/usr/bin/time -v "$top/moe-pack" synth --preset mixtral-8x7b --layers 2 --format safetensors \
		--dtype bf16 --shard-size 2G --no-progress "$src" 2>"$work/synth.time"
fi
echo "source: $(du -sb "$src" | cut -f1) bytes in $(ls "$src"/*.safetensors | wc -l) shards"
/usr/bin/time -v "$top/moe-pack" --force --no-progress -q "$quant" "$src" "$work/mixtral-2l-$quant.moe" \
	2>"$work/pack-$quant.time"
grep -E "Maximum resident|Elapsed|Percent of CPU" "$work/pack-$quant.time"
"$top/moe-pack" --info "$work/mixtral-2l-$quant.moe" | tail -n 9
