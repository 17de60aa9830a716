#!/bin/sh
# bench/experts_per_token.sh - what --experts-per-token costs and saves on the trained
# demo model (models/kjv-moe, 8 experts, top-2): perplexity over its held-out text in
# chunks of 256 tokens, mean KL and top-1 agreement against the model's own top-2,
# and the expert bytes read per token with the expert cache at a quarter of the
# experts (moe-run --perplexity --stats-json, -b 1 as decoding runs).
# Run from a built tree. Usage: bench/experts_per_token.sh [QUANT]
set -eu
cd "$(dirname "$0")/.."
D=models/kjv-moe
Q=${1:-q8}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
./moe-pack --no-progress -q "$Q" "$D" "$W/m.moe" >/dev/null
# the expert cache at a quarter of the experts' bytes, the rest of the budget as moe-run sizes it
./moe-pack --info --json "$W/m.moe" >"$W/info.json"
./moe-run -m "$W/m.moe" --tokens 1 -n 0 -c 256 --no-offload --stats-json "$W/sizes.json" >/dev/null 2>&1
BUDGET=$(/usr/bin/python3 - "$W/info.json" "$W/sizes.json" <<'PY'
import json, sys
info, sizes = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(sizes["resident_bytes"] + sizes["session_bytes"] + info["kinds"]["experts"]["raw_bytes"] // 4)
PY
)
./moe-run -m "$W/m.moe" --perplexity "$D/heldout.txt" -c 256 --logits-out "$W/base" >/dev/null
echo "--ram-budget $BUDGET: the expert cache holds a quarter of the experts"
echo "| experts per token | perplexity | mean KL vs top-2 | top-1 agreement | expert MB read per token | hit rate |"
echo "|---|---|---|---|---|---|"
for k in 2 1; do
	./moe-run -m "$W/m.moe" --perplexity "$D/heldout.txt" -c 256 --experts-per-token "$k" --kl-base "$W/base" >"$W/p$k.txt"
	./moe-run -m "$W/m.moe" --perplexity "$D/heldout.txt" -c 256 -b 1 --experts-per-token "$k" \
		--ram-budget "$BUDGET" --stats-json "$W/s$k.json" >/dev/null
	/usr/bin/python3 - "$k" "$W/p$k.txt" "$W/s$k.json" <<'PY'
import json, re, sys
k, p, s = sys.argv[1], open(sys.argv[2]).read(), json.load(open(sys.argv[3]))
ppl = re.search(r"^perplexity (\S+)", p, re.M).group(1)
kl = re.search(r"^mean KL (\S+), top-1 agreement (\S+)", p, re.M)
x = s["experts"]
print("| %s | %s | %s | %s | %.3f | %.3f |" % (k, ppl, kl.group(1).rstrip(","), kl.group(2),
      x["bytes_read"] / 1e6 / s["tokens"], (x["hits"] + x["prefetch_hits"]) / x["uses"]))
PY
done
