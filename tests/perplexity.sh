#!/bin/sh
# moe-run --perplexity against the numpy float64 reference: the text tokenized, cut
# into chunks of -c tokens, every token after a chunk's first scored; --kl-base's
# mean KL and top-1 agreement against logits computed independently from the two
# --logits-out files; refusals.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${TOKENIZER_DATA:?run through make check}"
cd "$WORK"
check "synth folder" "$MOE_PACK" synth --format safetensors --dtype f32 --hidden 64 --vocab 32000 m
cp "$TOKENIZER_DATA/mistral-spm/tokenizer.json" "$TOKENIZER_DATA/mistral-spm/tokenizer_config.json" m/
check "f32 pack" "$MOE_PACK" --no-progress -q f32 --zstd-min-saving 100 m f.moe
check "q8 pack" "$MOE_PACK" --no-progress -q q8 m q.moe
head -c 2500 "$TESTS_DIR/../README.md" >t.txt
check "ids" sh -c "'$MOE_RUN' --tokenize -m f.moe < t.txt > ids.json"
check "f32 perplexity" sh -c "'$MOE_RUN' -m f.moe --perplexity t.txt -c 48 -b 16 --kv-type f32 --logits-out base.f32 > f.txt"
check "q8 against it" sh -c "'$MOE_RUN' -m q.moe --perplexity t.txt -c 48 -b 16 --kv-type f32 --kl-base base.f32 --logits-out q.f32 > q.txt"
check "perplexity = reference, KL = KL of the logits" py - "$TESTS_DIR" <<'PY'
import json, re, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import reference as R
ids = json.load(open("ids.json"))
cfg, W = json.load(open("m/config.json")), R.load_safetensors("m")
nll, n = 0.0, 0
for c0 in range(0, len(ids) - 1, 48):
    chunk = np.array(ids[c0:c0 + 48])
    lg = R.forward(cfg, W, chunk)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    nll += (lse[:-1] - lg[np.arange(len(chunk) - 1), chunk[1:]]).sum()
    n += len(chunk) - 1
want = np.exp(nll / n)
m = re.search(r"perplexity ([0-9.]+) over (\d+) tokens", open("f.txt").read())
got, scored = float(m.group(1)), int(m.group(2))
assert scored == n, (scored, n)
assert abs(np.log(got) - np.log(want)) < 1e-4, (got, want)
V = cfg["vocab_size"]
b = np.fromfile("base.f32", np.float32).reshape(-1, V).astype(np.float64)
q = np.fromfile("q.f32", np.float32).reshape(-1, V).astype(np.float64)
ls = lambda a: a - (np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) + a.max(-1, keepdims=True))
kl = (np.exp(ls(b)) * (ls(b) - ls(q))).sum(-1).mean()
agree = (b.argmax(-1) == q.argmax(-1)).mean()
m = re.search(r"mean KL ([0-9.e-]+), top-1 agreement ([0-9.]+)", open("q.txt").read())
assert abs(float(m.group(1)) - kl) <= 1e-4 * kl + 1e-9, (m.group(1), kl)
assert abs(float(m.group(2)) - agree) < 1e-4, (m.group(2), agree)
print("perplexity %.4f (reference %.4f) over %d tokens; q8 KL %.3g, top-1 %.3f" % (got, want, n, kl, agree))
PY
cat out
head -c 1000 base.f32 >short.f32
expect_error "--kl-base too short" "fewer rows than" "$MOE_RUN" -m q.moe --perplexity t.txt -c 48 --kl-base short.f32
expect_error "--kl-base alone" "goes with --perplexity" "$MOE_RUN" -m q.moe -p hi --kl-base base.f32
expect_error "--perplexity with --tokens" "goes without" "$MOE_RUN" -m q.moe --perplexity t.txt --tokens 1,2
expect_error "missing text" "no-such.txt" "$MOE_RUN" -m q.moe --perplexity no-such.txt
finish
