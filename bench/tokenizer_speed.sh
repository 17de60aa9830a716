#!/bin/sh
# bench/tokenizer_speed.sh - moe-run --tokenize on 1 MiB of text with each real
# tokenizer, loaded from a pack's tokenizer.bin; median of 5 runs, and the load
# alone (empty input) so the difference is the tokenizing. Two inputs: prose (this
# repository's man pages and README, repeated) and one 1 MiB run of 'a' (a single
# pre-token: the worst case for merging).
# Usage: bench/tokenizer_speed.sh [TOKENIZER_DATA]   (run from a built tree)
set -eu
cd "$(dirname "$0")/.."
DATA=${1:-tests/tokenizers}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat man/*.1 man/*.5 man/*.7 README.md >"$W/src"
/usr/bin/python3 -c '
import sys
s = open(sys.argv[1], encoding="utf-8").read()
open(sys.argv[2], "w").write((s * (1048576 // len(s) + 1))[:1048576])
open(sys.argv[3], "w").write("a" * 1048576)' "$W/src" "$W/prose" "$W/aaa"
median() { sort -n | sed -n 3p; }
secs() { # secs INPUT PACK: wall seconds of one --tokenize
	/usr/bin/time -f %e ./moe-run --tokenize -m "$2" <"$1" 2>&1 >/dev/null | tail -1
}
printf '%-12s %9s %12s %12s %10s\n' tokenizer load_s prose_1MiB_s aaa_1MiB_s prose_ids
for spec in qwen3:151936 deepseek-v3:129280 mistral-spm:32000; do
	name=${spec%:*}
	./moe-pack synth --hidden 32 --vocab "${spec#*:}" --tokenizer "$DATA/$name/tokenizer.json" "$W/$name.moe" >/dev/null
	: >"$W/empty"
	load=$(for i in 1 2 3 4 5; do secs "$W/empty" "$W/$name.moe"; done | median)
	prose=$(for i in 1 2 3 4 5; do secs "$W/prose" "$W/$name.moe"; done | median)
	aaa=$(for i in 1 2 3 4 5; do secs "$W/aaa" "$W/$name.moe"; done | median)
	n=$(./moe-run --tokenize -m "$W/$name.moe" <"$W/prose" | tr ',' '\n' | wc -l)
	printf '%-12s %9s %12s %12s %10s\n' "$name" "$load" "$prose" "$aaa" "$n"
done
