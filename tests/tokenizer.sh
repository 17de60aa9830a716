#!/bin/sh
# moe-run --tokenize on the real tokenizer files against ids from an independent
# implementation (tests/fixtures: @lenml/tokenizers, the JS port of HF tokenizers),
# and decode(encode(s)) == s. Byte-level BPE files (Qwen3, DeepSeek-V3) for now.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}"
DATA="$TESTS_DIR/../../shared/testdata/tokenizers"
[ -d "$DATA" ] || DATA=/work/shared/testdata/tokenizers
cat >"$WORK/tok.py" <<'PY'
import json, subprocess, sys, unicodedata
run, tok, fixtures = sys.argv[1], sys.argv[2], sys.argv[3]
nfc = json.load(open(tok)).get("normalizer", {}).get("type") == "NFC"  # Qwen3 normalizes, then is lossless
bad = 0
cases = json.load(open(fixtures))
for c in cases:
    r = subprocess.run([run, "--tokenize", "--tokenizer", tok], input=c["text"].encode(), capture_output=True)
    got = json.loads(r.stdout) if r.returncode == 0 else None
    if got != c["ids"]:
        bad += 1
        print("MISMATCH %r\n  got  %s\n  want %s %s" % (c["text"][:60], got, c["ids"], r.stderr.decode()[:200]))
        continue
    d = subprocess.run([run, "--detokenize", "--tokenizer", tok], input=json.dumps(got).encode(), capture_output=True)
    want = unicodedata.normalize("NFC", c["text"]) if nfc else c["text"]
    if d.returncode != 0 or d.stdout.decode() != want:
        bad += 1
        print("ROUND TRIP %r -> %r" % (c["text"][:60], d.stdout.decode()[:60]))
print("%s: %d of %d strings exact" % (fixtures.rsplit("/", 1)[-1], len(cases) - bad, len(cases)))
sys.exit(1 if bad else 0)
PY
for name in qwen3 deepseek-v3; do
	check "$name ids and round trip" py "$WORK/tok.py" "$MOE_RUN" "$DATA/$name/tokenizer.json" "$TESTS_DIR/fixtures/tokenizer_$name.json"
	cat "$WORK/out"
done
expect_error "unsupported tokenizer kind" "is not supported" "$MOE_RUN" --tokenize --tokenizer "$DATA/mistral-spm/tokenizer.json" -p hi
printf '{"model": ' >"$WORK/bad.json"
expect_error "malformed tokenizer.json" "malformed JSON" "$MOE_RUN" --tokenize --tokenizer "$WORK/bad.json" -p hi
finish
