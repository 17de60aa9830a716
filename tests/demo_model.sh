#!/bin/sh
# The shipped demo model (models/kjv-moe, trained by tools/demo/train_demo.py): its f32
# pack's logits against the float64 numpy forward pass; its held-out perplexity packed at
# q8 below a stated bound, so a regression in the kernels, the engine or the tokenizer
# shows as a quality loss; the quick start's run (a --ram-budget below the experts'
# bytes) streams experts and prints the same text as with every expert mapped;
# --perplexity's --stats-json adds up, and is refused or removed when a run fails.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${DEMO_MODEL:?run through make check}"
cd "$WORK"
H=$DEMO_MODEL/heldout.txt
check "f32 pack" "$MOE_PACK" --no-progress -q f32 "$DEMO_MODEL" f32.moe
check "q8 pack" "$MOE_PACK" --no-progress -q q8 "$DEMO_MODEL" q8.moe

# logits of the trained weights = the float64 reference's (as engine_logits.sh on random ones)
head -n 3 "$H" >line.txt
check "ids" sh -c "'$MOE_RUN' --tokenize -m f32.moe < line.txt > ids.json"
check "f32 logits" sh -c "'$MOE_RUN' -m f32.moe --tokens \"\$(tr -d '[] ' < ids.json)\" -n 0 -b 7 --kv-type f32 --logits-out f32.bin"
check "f32 logits = reference" py - "$TESTS_DIR" "$DEMO_MODEL" <<'PY'
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import reference as R
ids = np.array(json.load(open("ids.json")))
ref = R.forward(json.load(open(sys.argv[2] + "/config.json")), R.load_safetensors(sys.argv[2]), ids)
got = np.fromfile("f32.bin", np.float32).reshape(ref.shape)
rel = np.abs(ref - got).max() / np.abs(ref).max()
print("%d tokens: max|d|/max|logit| %.2e" % (len(ids), rel))
assert len(ids) > 20 and rel <= 1e-4, rel
PY
cat "$WORK/out"

# Held-out perplexity at q8 (chunks of 256 tokens, the training context). Measured when
# the model was trained (bench/RESULTS.md): f32 26.11, q8 26.12. The bound, 26.9, leaves 3 %
# for kernel or tokenizer changes that are not regressions; a broken kernel, routing or
# tokenizer moves it by far more (an untrained model scores ~1300).
check "q8 perplexity" sh -c "'$MOE_RUN' -m q8.moe --perplexity '$H' -c 256 > ppl.txt"
check "q8 perplexity below 26.9" awk '/^perplexity/ {p = $2} END {print "q8 held-out perplexity", p; exit !(p > 1 && p < 26.9)}' ppl.txt
cat "$WORK/out"

# the quick start's run: experts stream through a cache smaller than the experts
check "q8 info" sh -c "'$MOE_PACK' --info --json q8.moe > info.json"
EXPERT_BYTES=$(py -c "import json; print(json.load(open('info.json'))['kinds']['experts']['raw_bytes'])")
BUDGET=8M
if [ $((8 * 1048576)) -lt "$EXPERT_BYTES" ]; then ok; else not_ok "budget $BUDGET not below the experts' $EXPERT_BYTES bytes"; fi
GEN="-p 'And God said' -n 48 --temp 0.8 --top-p 0.95 --seed 3 -c 256"
check "generate under the budget" sh -c "'$MOE_RUN' -m q8.moe $GEN --ram-budget $BUDGET --stats > budget.txt"
grep -E "experts: .* [1-9][0-9]* misses" "$WORK/err" >/dev/null && ok || not_ok "no expert was read from disk: $(cat "$WORK/err")"
check "generate, every expert mapped" sh -c "'$MOE_RUN' -m q8.moe $GEN --no-offload > mapped.txt"
check "same text" cmp budget.txt mapped.txt
if [ "$(wc -w <budget.txt)" -ge 20 ]; then ok; else not_ok "short text: $(cat budget.txt)"; fi

# --perplexity token by token under the budget: the same perplexity, and counts that add up
head -c 3000 "$H" >part.txt
check "ppl mapped" sh -c "'$MOE_RUN' -m q8.moe --perplexity part.txt -c 256 -b 1 --no-offload > a.txt"
check "ppl streamed" sh -c "'$MOE_RUN' -m q8.moe --perplexity part.txt -c 256 -b 1 --ram-budget $BUDGET --prefetch-depth 2 --stats-json s.json > b.txt"
check "same perplexity" cmp a.txt b.txt
check "stats-json adds up" py - <<'PY'
import json
s = json.load(open("s.json"))
x = s["experts"]
assert x["uses"] == s["tokens"] * 6 * 2, (x["uses"], s["tokens"])
assert x["hits"] + x["prefetch_hits"] + x["misses"] == x["uses"]
assert x["misses"] > 0 and x["prefetch_hits"] > 0 and 0 < x["prefetch_precision"] <= 1
assert s["scored_tokens"] < s["tokens"] and s["perplexity"] > 1
PY

# stats-json: an unwritable path is refused before any work; a failed run leaves none
expect_error "stats-json in a missing folder" "cannot write" "$MOE_RUN" -m q8.moe --perplexity part.txt -c 256 --stats-json no/s.json
if grep -q "^perplexity" "$WORK/out"; then not_ok "scored the text before refusing the stats path"; else ok; fi
printf 'a' >one.txt
expect_error "nothing to score" "nothing to predict" "$MOE_RUN" -m q8.moe --perplexity one.txt --no-add-special --stats-json bad.json
no_output "failed run's stats-json" bad.json
finish
