#!/bin/sh
# bench/kquant_quality.sh - the quality cost of GGUF's quantization types on the trained
# demo model (models/kjv-moe), for bench/RESULTS.md: the folder written as an f32 GGUF
# (tests/write_model.py --from), quantized by llama.cpp's llama-quantize (the peer: give
# its path) into each type, packed by moe-pack with the blocks kept; then perplexity
# over the held-out text (-c 256), mean KL and top-1 agreement against the f32 pack
# (moe-run --perplexity --kl-base), the experts' bits per weight and the pack's size.
# moe-pack's own quantizations of the folder (q8, q4, its K types and K mixes) are in
# the same table. A second table compares the quantizers alone: every matrix of the
# model in one K type by llama-quantize --pure and by moe-pack, RMS error against the
# f32 weights (bench/quant_rms.py).
# Usage: LLAMA_QUANTIZE=/path/to/llama-quantize bench/kquant_quality.sh [TYPES]
set -eu
cd "$(dirname "$0")/.."
: "${LLAMA_QUANTIZE:?set LLAMA_QUANTIZE to llama.cpp's llama-quantize}"
TYPES=${1:-Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 IQ4_XS Q3_K_M Q2_K}
D=models/kjv-moe
H=$D/heldout.txt
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
/usr/bin/python3 tests/write_model.py gguf "$W/kjv.f32.gguf" --from="$D" --types=attn=F32,experts=F32,embed=F32,output=F32
./moe-pack --no-progress -q f32 "$D" "$W/f32.moe" >/dev/null
./moe-run -m "$W/f32.moe" --perplexity "$H" -c 256 --kv-type f32 --logits-out "$W/base.f32" >"$W/p.txt"
echo "| source | pack types (experts) | experts bits/w | perplexity | mean KL vs f32 | top-1 agreement | pack MB |"
echo "|---|---|---|---|---|---|---|"
row() { # LABEL PACK
	./moe-pack --info --json "$2" >"$W/i.json"
	./moe-run -m "$2" --perplexity "$H" -c 256 --kv-type f32 --kl-base "$W/base.f32" >"$W/p.txt"
	/usr/bin/python3 - "$1" "$W/i.json" "$W/p.txt" "$(stat -c %s "$2")" <<'PY'
import json, re, sys
label, info, out, size = sys.argv[1], json.load(open(sys.argv[2])), open(sys.argv[3]).read(), int(sys.argv[4])
ppl = re.search(r"^perplexity (\S+)", out, re.M).group(1)
kl = re.search(r"^mean KL (\S+?),? .*top-1 agreement (\S+)", out, re.M)
e = info["kinds"]["experts"]
print("| %s | %s | %.2f | %s | %s | %s | %.1f |" % (label, e["types"], e["bits_per_weight"], ppl, kl.group(1),
                                                   kl.group(2), size / 1e6))
PY
}
for q in q8 q6_k q5_k_m q4_k_m q4 q3_k_m q2_k_m; do
	./moe-pack --no-progress -q "$q" "$D" "$W/$q.moe" >/dev/null
	row "moe-pack -q $q (folder)" "$W/$q.moe"
done
for t in $TYPES; do
	"$LLAMA_QUANTIZE" "$W/kjv.f32.gguf" "$W/kjv.$t.gguf" "$t" >"$W/q.log" 2>&1 || { echo "| $t | llama-quantize failed |"; continue; }
	./moe-pack --no-progress --tokenizer "$D/tokenizer.json" "$W/kjv.$t.gguf" "$W/$t.moe" >/dev/null 2>&1
	row "GGUF $t (llama-quantize)" "$W/$t.moe"
	rm -f "$W/kjv.$t.gguf"
done

echo
echo "| quantizer | experts' type | experts RMS error / RMS | dense matrices RMS error / RMS |"
echo "|---|---|---|---|"
./moe-pack --no-progress -q f32 --zstd-min-saving 100 "$D" "$W/f32.moe" --force >/dev/null
for t in Q2_K Q3_K Q4_K Q5_K Q6_K; do
	q=$(echo "$t" | tr 'A-Z' 'a-z')
	"$LLAMA_QUANTIZE" --pure "$W/kjv.f32.gguf" "$W/kjv.$t.gguf" "$t" >"$W/q.log" 2>&1
	./moe-pack --no-progress --zstd-min-saving 100 --tokenizer "$D/tokenizer.json" "$W/kjv.$t.gguf" "$W/l-$q.moe" >/dev/null 2>&1
	./moe-pack --no-progress --zstd-min-saving 100 -q "$q" "$D" "$W/m-$q.moe" >/dev/null
	/usr/bin/python3 bench/quant_rms.py "$W/f32.moe" "llama-quantize --pure $t=$W/l-$q.moe" "moe-pack -q $q=$W/m-$q.moe"
	rm -f "$W/kjv.$t.gguf"
done
