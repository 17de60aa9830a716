#!/bin/sh
# bench/gguf_tokenizer_ids.sh - the GGUF tokenizer reader against Hugging Face's ids on
# llama.cpp's own vocabulary files (its models/ggml-vocab-NAME.gguf, with .inp strings
# and .out ids that its tests/test-tokenizer-0.py made with transformers' AutoTokenizer):
# each vocabulary goes into a small model GGUF (tests/write_model.py --vocab), is packed,
# and every .inp string is tokenized by moe-run without special tokens.
# Usage: bench/gguf_tokenizer_ids.sh LLAMA_CPP/models [NAMES]
set -eu
cd "$(dirname "$0")/.."
M=${1:?give the models folder of llama.cpp}
NAMES=${2:-llama-spm qwen2 qwen35 llama-bpe gpt-2}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for v in $NAMES; do
	/usr/bin/python3 tests/write_model.py gguf "$W/$v.gguf" --types=attn=F32,experts=Q8_0,embed=F16,output=F16 \
		--vocab="$M/ggml-vocab-$v.gguf"
	./moe-pack --no-progress "$W/$v.gguf" "$W/$v.moe" >/dev/null
	/usr/bin/python3 - ./moe-run "$W/$v.moe" "$M/ggml-vocab-$v.gguf" "$v" <<'PY'
import json, subprocess, sys
run, pack, vocab, name = sys.argv[1:5]
texts = open(vocab + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
texts = texts[:-1] if texts and texts[-1] == "" else texts
want = open(vocab + ".out").read().split("\n")
exact = 0
for i, t in enumerate(texts):
    r = subprocess.run([run, "--tokenize", "--no-add-special", "-m", pack], input=t.encode(), capture_output=True)
    got = json.loads(r.stdout) if r.returncode == 0 else None
    if got == [int(x) for x in want[i].split()]:
        exact += 1
    else:
        print("  mismatch %r" % t[:40])
print("| %s | %d of %d |" % (name, exact, len(texts)))
PY
done
