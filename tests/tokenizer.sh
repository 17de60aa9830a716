#!/bin/sh
# moe-run --tokenize / --detokenize, the command line other tools check our ids
# through, on the three real tokenizer files (byte-level Qwen3 and DeepSeek-V3,
# sentencepiece-style Mistral v1) against ids from an independent implementation
# (tests/fixtures: @lenml/tokenizers, the JS port of HF tokenizers): from
# tokenizer.json and from the binary form a pack stores; with and without the
# special tokens encode() adds; bytes that are not UTF-8 read as Python's
# decode("utf-8", "replace"); unsupported kinds refused by name. Every fixture
# string is checked in process by tests/test_text.c; here a sample of them.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${TOKENIZER_DATA:?run through make check}"
DATA=$TOKENIZER_DATA
cat >"$WORK/tok.py" <<'PY'
import json, subprocess, sys, unicodedata
run, tok, fixtures, name = sys.argv[1:5]
source = ["--tokenizer", tok] if tok.endswith(".json") else ["-m", tok]
nfc = name == "qwen3"  # its normalizer is NFC; lossless after that
bad = 0
sample = ["", "Hello world", "hello\nworld", "  ", "<s>literal special</s> text", "<|im_start|>user\nhi<|im_end|>",
          "\U0001F600\U0001F603\U0001F604 emoji \U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family \U0001F1EB\U0001F1F7 flag",
          "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff0c\u4f60\u597d\u4e16\u754c\u3002"]
all_cases = json.load(open(fixtures))
cases = [c for c in all_cases if c["text"] in sample]
assert len(cases) == len(sample), "fixture strings changed"

def tokenize(data, *flags):
    r = subprocess.run([run, "--tokenize", *flags, *source], input=data, capture_output=True)
    return json.loads(r.stdout) if r.returncode == 0 else r.stderr.decode()

for c in cases:
    got = tokenize(c["text"].encode(), "--no-add-special")
    if got != c["ids"]:
        bad += 1
        print("MISMATCH %r\n  got  %s\n  want %s" % (c["text"][:60], got, c["ids"]))
        continue
    # encode()'s default. transformers' Llama-class tokenizers (DeepSeek-V3's
    # tokenizer_config.json names LlamaTokenizerFast, add_bos_token true) put BOS
    # first whatever the file's post-processor says; the JS port follows the file.
    want = [0] + c["ids"] if name == "deepseek-v3" else c["ids_special"]
    got = tokenize(c["text"].encode())
    if got != want:
        bad += 1
        print("WITH SPECIAL %r\n  got  %s\n  want %s" % (c["text"][:60], got, want))
    d = subprocess.run([run, "--detokenize", *source], input=json.dumps(c["ids"]).encode(), capture_output=True)
    text = unicodedata.normalize("NFC", c["text"]) if nfc else c["text"]
    lossy = name == "mistral-spm" and "</s>" in text  # "▁" is put before text after an added token
    if d.returncode != 0 or (d.stdout.decode() != text and not lossy):
        bad += 1
        print("ROUND TRIP %r -> %r" % (c["text"][:60], d.stdout.decode()[:60]))
# not UTF-8: the same ids as the text Python's errors="replace" makes of the bytes
by_text = {c["text"]: c["ids"] for c in all_cases}
for raw in [b"abc\xffdef", b"\xe2\x82", b"a\xc0\xafb", b"\xed\xa0\x80x", b"caf\xc3"]:
    want = by_text[raw.decode("utf-8", "replace")]
    got = tokenize(raw, "--no-add-special")
    if got != want:
        bad += 1
        print("INVALID UTF-8 %r\n  got  %s\n  want %s" % (raw, got, want))
print("%s: %d of %d exact (%d fixture strings, 5 byte strings)" % (name, len(cases) + 5 - bad, len(cases) + 5, len(cases)))
sys.exit(1 if bad else 0)
PY
for spec in qwen3:151936 deepseek-v3:129280 mistral-spm:32000; do
	name=${spec%:*}
	check "$name from tokenizer.json" py "$WORK/tok.py" "$MOE_RUN" "$DATA/$name/tokenizer.json" \
		"$TESTS_DIR/fixtures/tokenizer_$name.json" "$name"
	cat "$WORK/out"
	# the pack's binary form (a small model with the tokenizer's vocabulary size)
	check "$name packed" "$MOE_PACK" synth --hidden 32 --vocab "${spec#*:}" --tokenizer "$DATA/$name/tokenizer.json" \
		"$WORK/$name.moe"
	check "$name from the pack's tokenizer.bin" py "$WORK/tok.py" "$MOE_RUN" "$WORK/$name.moe" \
		"$TESTS_DIR/fixtures/tokenizer_$name.json" "$name"
	cat "$WORK/out"
done

# the tokenizer inside a GGUF (tokenizer.ggml.*), written from the same files as
# llama.cpp's converter writes it: byte-level with the pre-tokenizer named only
# (qwen2, deepseek-v3), sentencepiece with scores instead of merges (llama)
for spec in qwen3:qwen2 deepseek-v3:deepseek-v3 mistral-spm:llama; do
	name=${spec%:*}
	check "$name as a GGUF" py "$TESTS_DIR/write_model.py" gguf "$WORK/$name.gguf" --types=attn=F32,experts=Q8_0,embed=F16,output=F16 \
		--vocab="$DATA/$name" --pre="${spec#*:}"
	check "$name GGUF packed" "$MOE_PACK" "$WORK/$name.gguf" "$WORK/$name-gguf.moe"
	check "$name from the GGUF's tokenizer" py "$WORK/tok.py" "$MOE_RUN" "$WORK/$name-gguf.moe" \
		"$TESTS_DIR/fixtures/tokenizer_$name.json" "$name"
	cat "$WORK/out"
	# the chat template comes along: the same prompt as from tokenizer_config.json
	if [ "$name" != mistral-spm ]; then
		check "$name chat prompt (tokenizer.json pack)" "$MOE_RUN" -m "$WORK/$name.moe" --chat -p "Hi <think>" --print-prompt
		cp "$WORK/out" "$WORK/prompt.json-pack"
		check "$name chat prompt (GGUF pack)" "$MOE_RUN" -m "$WORK/$name-gguf.moe" --chat -p "Hi <think>" --print-prompt
		cp "$WORK/out" "$WORK/prompt.gguf-pack"
		check "$name: the GGUF's chat template renders as tokenizer_config.json's" \
			cmp "$WORK/prompt.gguf-pack" "$WORK/prompt.json-pack"
	fi
done
# what is not read is said, and the pack runs on ids; what is malformed is an error
# (a small byte-level tokenizer: GPT-2's 256 byte characters, one merge, one special token)
cat >"$WORK/vocab.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import gguf_vocab as g, write_model as w
keys = g.small()
change = sys.argv[3]
if change == "pre":
    keys = [(k, t, "kimi-k2" if k == "tokenizer.ggml.pre" else v) for k, t, v in keys]
elif change == "types":
    keys = [(k, t, (v[0], v[1][:-1]) if k == "tokenizer.ggml.token_type" else v) for k, t, v in keys]
elif change == "eos":
    keys = [(k, t, 10**9 if k == "tokenizer.ggml.eos_token_id" else v) for k, t, v in keys]
elif change == "merges":
    keys = [(k, t, (g.I32, [1, 2]) if k == "tokenizer.ggml.merges" else v) for k, t, v in keys]
g.from_hf = lambda folder, pre: keys
w.gguf(sys.argv[2], vocab="small", pre="qwen2")
PY
for bad in none pre types eos merges; do
	check "GGUF with a $bad change" py "$WORK/vocab.py" "$TESTS_DIR" "$WORK/bad-$bad.gguf" "$bad"
done
check "a small GGUF tokenizer" "$MOE_PACK" "$WORK/bad-none.gguf" "$WORK/small-gguf.moe"
check "... encodes" "$MOE_RUN" -m "$WORK/small-gguf.moe" --tokenize -p "hehe<|end|>"
cp "$WORK/out" "$WORK/ids"
check "... as its merge and special token say" grep -qx '\[256, 256, 257\]' "$WORK/ids"
check "an unknown pre-tokenizer: packed without the tokenizer" "$MOE_PACK" "$WORK/bad-pre.gguf" "$WORK/bad-pre.moe"
cp "$WORK/err" "$WORK/pre.err"
check "... and says why" grep -q 'tokenizer.ggml.pre "kimi-k2" is not supported.*pass --tokenizer' "$WORK/pre.err"
expect_error "token types not one per token" "tokenizer.ggml.token_type is not 258 int32 values" \
	"$MOE_PACK" "$WORK/bad-types.gguf" "$WORK/bad.moe"
expect_error "an eos id out of range" "tokenizer.ggml.eos_token_id 1000000000 is not a token" \
	"$MOE_PACK" "$WORK/bad-eos.gguf" "$WORK/bad.moe"
expect_error "merges that are not strings" "tokenizer.ggml.merges is not an array of strings" \
	"$MOE_PACK" "$WORK/bad-merges.gguf" "$WORK/bad.moe"
no_output "no pack left by a malformed tokenizer" "$WORK/bad.moe"

# refused by name
printf '{"model": {"type": "WordPiece", "vocab": {"a": 0}}}' >"$WORK/wordpiece.json"
expect_error "WordPiece" "model type WordPiece is not supported" "$MOE_RUN" --tokenize --tokenizer "$WORK/wordpiece.json" -p hi
printf '{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}' >"$WORK/unigram.json"
expect_error "Unigram" "model type Unigram is not supported" "$MOE_RUN" --tokenize --tokenizer "$WORK/unigram.json" -p hi
printf '{"model": ' >"$WORK/bad.json"
expect_error "malformed tokenizer.json" "malformed JSON" "$MOE_RUN" --tokenize --tokenizer "$WORK/bad.json" -p hi
expect_error "id out of range" "not in the vocabulary" "$MOE_RUN" --detokenize --tokenizer "$DATA/qwen3/tokenizer.json" -p '[1, 999999]'
expect_error "a vocabulary larger than the model's" "more than the model's vocabulary" \
	"$MOE_PACK" synth --hidden 32 --vocab 1000 --tokenizer "$DATA/mistral-spm/tokenizer.json" "$WORK/small.moe"
no_output "no pack left by the refused tokenizer" "$WORK/small.moe"
finish
