#!/bin/sh
# Habits of llama.cpp users: --version / -V on every tool; -n -1 generates until the
# end of sequence or a full context, and a huge -n means the same instead of an
# allocation for it; an output folder may be named with a trailing slash; moe-bench
# takes sizes as the other tools do.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${MOE_BENCH:?run through make check}" "${MOE_SERVER:?run through make check}"
cd "$WORK"
for tool in "$MOE_PACK" "$MOE_RUN" "$MOE_BENCH" "$MOE_SERVER"; do
	name=$(basename "$tool")
	for flag in --version -V; do
		check "$name $flag" sh -c "'$tool' $flag | grep -qx '$name (moemap) [0-9][0-9.]*'"
	done
done
check "synth" "$MOE_PACK" synth --layers 2 --hidden 64 --expert-ff 128 --vocab 128 m.moe
# ids only, no tokenizer: no end of sequence, so -1 fills the context: 16 - 3 + 1 = 14
"$MOE_RUN" -m m.moe --tokens 1,2,3 -n -1 -c 16 --stats-json s.json >ids 2>err
check "-n -1 runs" [ $? -eq 0 ]
check "-n -1 fills the context: 14 tokens after 3" [ "$(wc -w <ids)" -eq 14 ]
check "-n -1 says why it stopped" py -c 'import json, sys; assert json.load(open(sys.argv[1]))["stop_reason"] == "context"' s.json
"$MOE_RUN" -m m.moe --tokens 1,2,3 -n 2147483647 -c 16 >ids.big 2>err
check "a huge -n is the context, not an allocation" cmp ids ids.big
expect_error "-n -2 is refused" "out of range" "$MOE_RUN" -m m.moe --tokens 1 -n -2
# the README's own example shape: a folder named with a trailing slash
check "synth --format safetensors big/ (a trailing slash)" "$MOE_PACK" synth --layers 2 --hidden 64 --expert-ff 128 \
	--vocab 128 --format safetensors --shard-size 100K big/
check "... made big/ with its shards" [ -f big/config.json -a -f big/model.safetensors.index.json ]
check "... which packs" "$MOE_PACK" big/ big.moe
# on a terminal (script(1) gives one): a load banner, progress with rate and time;
# through a pipe, neither
tty() { script -qec "$1" /dev/null | tr '\r' '\n' >tty.out; }
tty "'$MOE_RUN' -m m.moe --tokens 1,2 -n 2 --ram-budget 2M"
check "moe-run on a terminal: one banner line" grep -q '^moe-run: m.moe: mixtral, 2 layers, 8 experts (2 active), .* MB; dense .* MB + KV and scratch .* MB + expert cache .* MB (.* of 16 experts); kernels .*, .* threads' tty.out
"$MOE_RUN" -m m.moe --tokens 1,2 -n 2 >/dev/null 2>pipe.err
check "... not through a pipe" [ ! -s pipe.err ]
"$MOE_PACK" "$DEMO_MODEL" kjv.moe >/dev/null && head -c 3000 "$DEMO_MODEL/heldout.txt" >text.txt
tty "'$MOE_RUN' -m kjv.moe --perplexity text.txt -c 64 -b 8"
check "--perplexity on a terminal: progress, rate, time" grep -q '^perplexity \[=*\] 100% \([0-9]*\)/\1 tokens, [0-9.]* tokens/s, in [0-9.]* s' tty.out
tty "'$MOE_PACK' synth --layers 2 --hidden 64 --expert-ff 128 --vocab 128 tty.moe"
check "moe-pack on a terminal: progress in MB/s" grep -q '^experts *\[=*\] 100% 16/16 experts, [0-9.]* MB/s, in [0-9.]* s' tty.out
"$MOE_PACK" synth --layers 2 --hidden 64 --expert-ff 128 --vocab 128 pipe.moe >/dev/null 2>pipe.err
check "... not through a pipe" [ ! -s pipe.err ]
check "moe-bench membw --memory 64M" "$MOE_BENCH" membw --memory 64M --reps 1
expect_error "moe-bench --memory below 64M" "at least 64M" "$MOE_BENCH" membw --memory 1M
finish
