#!/bin/sh
# The expert cache always finishes (cache.h, "Liveness"): scripted routes through
# tests/test_cache (the same experts every step, all of them, alternating sets,
# guesses all right, all wrong or all resident, at the least budget) and random
# ones, on a raw and a zstd pack; then whole runs of a model on random prompts
# (and one token repeated, so consecutive steps route alike) at random budgets,
# depths, policies, batches and I/O depths, each bit-identical to the mapped run;
# and a read that never completes ends in an error naming the expert, not a hang.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${TEST_CACHE:?run through make check}"
cd "$WORK"
# 4 layers x 8 experts; q4 experts stored raw, and f16 experts that zstd shrinks
check "synth raw" "$MOE_PACK" synth --layers 4 --hidden 128 --expert-ff 512 --vocab 256 -q experts=q4 \
	--zstd-min-saving 100 raw.moe
check "synth zstd" "$MOE_PACK" synth --layers 4 --hidden 128 --expert-ff 512 --vocab 256 -q experts=f16 \
	--zstd-min-saving 1 z.moe
check "the zstd pack has zstd blobs" py -c '
import sys; sys.path.insert(0, sys.argv[1])
from moepack_ref import Pack
assert all(x["codec"] == 1 for x in Pack("z.moe").experts.values())' "$TESTS_DIR"
check "scripted and random routes (test_cache)" timeout 900 "$TEST_CACHE" raw.moe z.moe
tail -n 3 "$WORK/out"

# whole runs at random settings: same bits as the mapped run, never a hang
sizes() { # the least budget moe-run takes and one with room for every expert, in bytes
	"$MOE_RUN" -m "$1" --tokens 1 -n 1 -c 64 --ram-budget 1K 2>&1 | sed -n 's/.*minimum \([0-9.]*\) MB.*/\1/p'
}
seed=1
for pack in raw.moe z.moe; do
	least=$(sizes $pack)
	least=$(py -c "import math; print(math.ceil($least * 1048576))")
	all=$(py -c '
import sys; sys.path.insert(0, sys.argv[1])
from moepack_ref import Pack
p = Pack(sys.argv[2]); print(len(p.experts) * p.layout["raw_size"])' "$TESTS_DIR" $pack)
	for i in 1 2 3 4 5 6 7 8 9 10; do
		set -- $(py -c '
import random, sys
r = random.Random(int(sys.argv[1]))
least, every = int(sys.argv[2]), int(sys.argv[3])
repeat = r.random() < 0.4
n = r.randint(2, 12)
ids = [r.randint(1, 255)] * n if repeat else [r.randint(1, 255) for _ in range(n)]
print(",".join(map(str, ids)), r.randint(least, least + every // 2), r.randint(0, 3),
      r.choice(["lru", "lfu"]), r.randint(1, 4), r.randint(1, 8))' $seed "$least" "$all")
		seed=$((seed + 1))
		ids=$1 budget=$2 depth=$3 policy=$4 batch=$5 iod=$6
		"$MOE_RUN" -m $pack --tokens "$ids" -n 12 -c 64 -b "$batch" --no-offload --logits-out ref.f32 >ref.ids 2>err
		what="$pack ids $ids budget $budget depth $depth $policy batch $batch io depth $iod"
		if timeout 60 "$MOE_RUN" -m $pack --tokens "$ids" -n 12 -c 64 -b "$batch" --ram-budget "$budget" \
			--prefetch-depth "$depth" --cache-policy "$policy" --io-depth "$iod" --expert-timeout 20 \
			--logits-out got.f32 >got.ids 2>err && cmp -s ref.f32 got.f32 && cmp -s ref.ids got.ids; then ok
		else not_ok "$what"; cat err >&2; fi
	done
done

# a read the disk never answers: an error within the bound, naming the expert
for io in io_uring pread; do
	[ $io = pread ] && export MOE_IO=pread || unset MOE_IO
	MOE_IO_FAULT=hang@3 expect_error "a read that never completes ($io)" "not ready after 1 s" \
		timeout 60 "$MOE_RUN" -m z.moe --tokens 1,2,3 -n 4 -c 64 --ram-budget "$least" --expert-timeout 1
	cp "$WORK/err" hang.err
	check "... and the message names the layer, expert and slots ($io)" \
		grep -q "layer [0-9]* expert [0-9]*: not ready after 1 s (.*slots: .*reads in flight)" hang.err
done
unset MOE_IO
expect_error "--expert-timeout 0 is refused" "expert-timeout" "$MOE_RUN" -m z.moe --tokens 1 --expert-timeout 0
finish
