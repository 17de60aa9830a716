#!/bin/sh
# tests/fuzz/make_corpus.sh - how the committed seed corpus was made (run from the
# top of a built tree: tests/fuzz/make_corpus.sh; it rewrites tests/fuzz/corpus).
# Small, valid inputs of every shape the parsers know: the fuzzer mutates from there.
set -eu
C=tests/fuzz/corpus
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
rm -rf "$C"
mkdir -p "$C/pack" "$C/forward" "$C/gguf" "$C/safetensors" "$C/config" "$C/tokenizer_json" "$C/tokenizer_bin" "$C/template" \
	"$C/routes"
PY=/usr/bin/python3
# a small sentencepiece-style tokenizer and a byte-level one, each with a chat template beside it
$PY - "$T" <<'PY'
import json, os, sys
t = sys.argv[1]
sp = {"model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True,
                "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, **{"<0x%02X>" % b: 3 + b for b in range(256)},
                          "\u2581": 259, "a": 260, "b": 261, "\u2581a": 262, "ab": 263},
                "merges": ["\u2581 a", "a b"]},
      "added_tokens": [{"id": 1, "content": "<s>", "special": True}, {"id": 2, "content": "</s>", "special": True}],
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
      "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                  {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
      "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
                         "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}}
def bytechar(b):
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))
vocab = {bytechar(b): b for b in range(256)}
vocab.update({"\u0120a": 256, "ab": 257, "<|im_end|>": 258})
bl = {"model": {"type": "BPE", "vocab": vocab, "merges": ["\u0120 a", "a b"]},
      "added_tokens": [{"id": 258, "content": "<|im_end|>", "special": True}],
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
      "decoder": {"type": "ByteLevel"}}
chatml = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
for name, tok, cfg in (("sp", sp, {"bos_token": "<s>", "eos_token": "</s>", "chat_template": chatml}),
                       ("bl", bl, {"eos_token": "<|im_end|>", "chat_template": chatml})):
    os.makedirs(os.path.join(t, name))
    json.dump(tok, open(os.path.join(t, name, "tokenizer.json"), "w"))
    json.dump(cfg, open(os.path.join(t, name, "tokenizer_config.json"), "w"))
PY
for k in sp bl; do
	cat "$T/$k/tokenizer.json" >"$C/tokenizer_json/$k"
	{ cat "$T/$k/tokenizer.json"; printf '\0'; cat "$T/$k/tokenizer_config.json"; } >"$C/tokenizer_json/$k-config"
done
TINY="--layers 1 --hidden 32 --heads 2 --kv-heads 1 --head-dim 16 --experts 2 --top-k 1 --expert-ff 32 --vocab 320"
./moe-pack synth --preset mixtral-tiny $TINY --tokenizer "$T/sp/tokenizer.json" "$T/mixtral.moe" >/dev/null
./moe-pack synth --preset qwen3-tiny $TINY --tokenizer "$T/bl/tokenizer.json" -q q4 "$T/qwen3.moe" >/dev/null
./moe-pack synth --preset deepseek-tiny --layers 2 --hidden 32 --heads 2 --experts 4 --top-k 2 --expert-ff 32 \
	--dense-ff 32 --vocab 320 --zstd-min-saving 0 "$T/deepseek.moe" >/dev/null
# GLM-4.5 (biases, partial RoPE, shared expert) and gpt-oss (sinks, windows in rings, expert biases)
./moe-pack synth --preset glm-tiny $TINY --dense-ff 32 --vocab 320 "$T/glm.moe" >/dev/null
./moe-pack synth --preset gpt-oss-tiny $TINY "$T/gpt-oss.moe" >/dev/null
for m in glm gpt-oss; do
	{ printf '\000'; cat "$T/$m.moe"; } >"$C/pack/$m"
	cp "$T/$m.moe" "$C/forward/$m"
done
for m in mixtral qwen3 deepseek; do
	{ printf '\001'; cat "$T/$m.moe"; } >"$C/pack/$m-resealed"
	{ printf '\000'; cat "$T/$m.moe"; } >"$C/pack/$m"
	cp "$T/$m.moe" "$C/forward/$m"
	$PY -c 'import sys; sys.path.insert(0, "tests"); import moepack_ref
p = moepack_ref.Pack(sys.argv[1]); b = p.meta.get("tokenizer.bin")
b is not None and open(sys.argv[2], "wb").write(b)' "$T/$m.moe" "$C/tokenizer_bin/$m"
done
for p in mixtral-tiny qwen3-tiny glm-tiny gpt-oss-tiny; do # moe-pack writes no DeepSeek GGUF
	./moe-pack synth --preset "$p" $TINY --format gguf --dtype q8_0 "$T/$p.gguf" >/dev/null
	cp "$T/$p.gguf" "$C/gguf/$p-q8_0"
done
for p in mixtral-tiny qwen3-tiny deepseek-tiny glm-tiny; do
	./moe-pack synth --preset "$p" --layers 2 --hidden 32 --heads 2 --experts 4 --top-k 2 --expert-ff 32 --dense-ff 32 \
		--vocab 320 --format safetensors --dtype f16 "$T/$p-st" >/dev/null
	cp "$T/$p-st/config.json" "$C/config/$p.json"
	{ cat "$T/$p-st/config.json"; printf '\0'; cat "$T/$p-st/model.safetensors"; } >"$C/safetensors/$p"
done
./moe-pack synth --preset mixtral-tiny $TINY --format gguf --dtype q4_0 "$T/q4.gguf" >/dev/null
cp "$T/q4.gguf" "$C/gguf/mixtral-tiny-q4_0"
# with a tokenizer inside: byte-level (qwen2 pre-tokenizer) and sentencepiece
$PY - "$T/q4.gguf" "$C/gguf" <<'PY'
import sys
sys.path.insert(0, "tests")
import gguf_vocab as g
g.with_keys(sys.argv[1], sys.argv[2] + "/mixtral-tiny-tokenizer-gpt2", g.small())
g.with_keys(sys.argv[1], sys.argv[2] + "/mixtral-tiny-tokenizer-llama", g.small_spm())
PY
# gpt-oss as released: experts fused into MXFP4 blocks and scales (U8, 4-D), small
$PY - "$T/oss-st" <<'PY'
import sys
sys.path.insert(0, "tests")
import write_model as w
w.CONFIGS["tiny"] = dict(w.CONFIGS["gpt_oss"], num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, vocab_size=64, num_local_experts=2, num_experts_per_tok=1,
                         experts_per_token=1, intermediate_size=32, layer_types=["sliding_attention", "full_attention"])
w.safetensors(sys.argv[1], arch="tiny")
PY
cp "$T/oss-st/config.json" "$C/config/gpt-oss.json"
{ cat "$T/oss-st/config.json"; printf '\0'; cat "$T/oss-st/model.safetensors"; } >"$C/safetensors/gpt-oss"
# Qwen3-Next (Gated DeltaNet layer, gated attention layer, gated shared expert), small: its
# release form (fused in_proj_qkvz/ba), Qwen3.5's (nested config, fused experts), llama.cpp's
# qwen3next and qwen35moe GGUFs, and the pack
$PY - "$T" <<'PY'
import sys
sys.path.insert(0, "tests")
import write_model as w
w.CONFIGS["qn"] = dict(w.CONFIGS["qwen3_next"], num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, partial_rotary_factor=0.5, vocab_size=64, num_experts=2,
                       num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                       linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=16,
                       linear_value_head_dim=16, layer_types=["linear_attention", "full_attention"])
w.safetensors(sys.argv[1] + "/qn-st", arch="qn")
w.CONFIGS["qwen3_5_moe"] = w.CONFIGS["qn"]
w.safetensors(sys.argv[1] + "/q35-st", arch="qwen3_5_moe")
w.CONFIGS["qwen3_next"] = w.CONFIGS["qn"]
for a, name in (("qwen3_next", "qwen3next"), ("qwen3_5_moe", "qwen35moe")):
    w.gguf("%s/%s.gguf" % (sys.argv[1], name), arch=a, types="attn=Q8_0,experts=Q8_0,embed=F32,output=Q8_0")
PY
for m in qn q35; do
	cp "$T/$m-st/config.json" "$C/config/$m.json"
	{ cat "$T/$m-st/config.json"; printf '\0'; cat "$T/$m-st/model.safetensors"; } >"$C/safetensors/$m"
done
cp "$T/qwen3next.gguf" "$C/gguf/qwen3next-q8_0"
cp "$T/qwen35moe.gguf" "$C/gguf/qwen35moe-q8_0"
./moe-pack "$T/qn-st" "$T/qwen3-next.moe" >/dev/null 2>&1
{ printf '\000'; cat "$T/qwen3-next.moe"; } >"$C/pack/qwen3-next"
cp "$T/qwen3-next.moe" "$C/forward/qwen3-next"
cp models/kjv-moe/config.json "$C/config/kjv-moe.json"
# templates: the real ones the suite checks against Jinja2, and the feature ones
$PY - "$C/template" <<'PY'
import json, os, sys
out = sys.argv[1]
for name in ("gpt-oss", "glm-4.6", "qwen3.5"):  # the newer families' (tests/templates)
    open(os.path.join(out, name), "w").write(open("tests/templates/%s.jinja" % name).read())
for name in ("qwen3", "deepseek-v3", "mistral-spm"):
    cfg = json.load(open("tests/tokenizers/%s/tokenizer_config.json" % name))
    t = cfg.get("chat_template")
    if isinstance(t, list):
        t = t[0]["template"]
    if t:
        open(os.path.join(out, name), "w").write(t)
src = open("tests/chat_template.py").read()
ns = {}
start = src.index("features = {")
end = src.index("\n}\n", start) + 3
exec(src[start:end], ns)
for i, (k, v) in enumerate(ns["features"].items()):
    open(os.path.join(out, "feature-%02d" % i), "w").write(v)
PY
# routes: a trace of the tiny Mixtral's tokens (trimmed), with and without a pin list
./moe-run -m "$T/mixtral.moe" --tokens 1,2,3,4,5,6 -n 2 -b 1 --no-offload --trace-out "$T/t.jsonl" >/dev/null
./moe-bench profile --trace "$T/t.jsonl" -o "$T/pins.txt"
cp "$T/t.jsonl" "$C/routes/trace"
{ cat "$T/t.jsonl"; printf '\0'; cat "$T/pins.txt"; } >"$C/routes/trace-pins"
du -sh "$C"/*
