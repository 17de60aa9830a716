#!/bin/sh
# Bad input: a one-line error naming what and where, a non-zero exit, no crash, and
# no output file (or temporary) left behind.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
W="$TESTS_DIR/write_model.py"
py "$W" safetensors good --arch=mixtral || not_ok "write folder"
py "$W" gguf good.gguf || not_ok "write gguf"
variant() { rm -rf "$1" && cp -r good "$1"; }
# rewrite model.safetensors of folder $1 with python code $2 acting on (header dict h, data bytes d)
edit_st() {
	py - "$1/model.safetensors" "$2" <<'PY'
import json, struct, sys
path, code = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
n = struct.unpack_from("<Q", raw)[0]
h = json.loads(raw[8:8 + n])
d = raw[8 + n:]
exec(code)
hb = json.dumps(h).encode()
open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + d)
PY
}
pack() { "$MOE_PACK" --no-progress "$@"; }

# ---- Hugging Face folders ----
variant trunc && py -c "import os; p='trunc/model.safetensors'; os.truncate(p, os.path.getsize(p) - 1000)"
expect_error "truncated safetensors" "lm_head.weight: data_offsets outside the file" pack trunc out.moe
no_output "truncated safetensors" out.moe
variant hlen && py -c "
import struct; p='hlen/model.safetensors'; b=bytearray(open(p,'rb').read()); b[0:8]=struct.pack('<Q', 1 << 40); open(p,'wb').write(b)"
expect_error "header length past the end" "header length 1099511627776 runs past the end" pack hlen out.moe
variant badjson && py -c "
p='badjson/model.safetensors'; b=bytearray(open(p,'rb').read()); b[40]=ord('{'); open(p,'wb').write(b)"
expect_error "malformed header JSON" "model.safetensors: header JSON malformed at byte" pack badjson out.moe
variant badcfg && printf '{"model_type": "mixtral",\n  "hidden_size": 128,,\n}' >badcfg/config.json
expect_error "malformed config.json" "config.json:2:" pack badcfg out.moe
variant llama && sed -i 's/"mixtral"/"llama"/' llama/config.json
expect_error "unsupported architecture" 'model_type "llama" is not supported' pack llama out.moe
variant huge && sed -i 's/"hidden_size": 128/"hidden_size": 1000000000000/' huge/config.json
expect_error "implausible size" "hidden_size = 1000000000000 is out of range (1..65536)" pack huge out.moe
variant nolayers && sed -i '/num_hidden_layers/d' nolayers/config.json
# the path once, then the detail (a message built from the last one must not overwrite itself)
expect_error "missing hyperparameter" "^moe-pack: nolayers/config.json: mixtral: hyperparameter n_layers missing or zero$" \
	pack nolayers out.moe
variant nocfg && rm nocfg/config.json
expect_error "no config.json" "no config.json" pack nocfg out.moe
variant missing && edit_st missing 'del h["model.layers.1.block_sparse_moe.experts.2.w3.weight"]'
expect_error "missing tensor" "model.layers.1.block_sparse_moe.experts.2.w3.weight (blk.1.ffn_up.2) missing" pack missing out.moe
no_output "missing tensor" out.moe
variant shape && sed -i 's/"intermediate_size": 96/"intermediate_size": 64/' shape/config.json
expect_error "wrong shape" "has shape \[96, 128\], the config implies \[64, 128\]" pack shape out.moe
variant i32 && edit_st i32 'h["model.norm.weight"]["dtype"] = "I32"'
expect_error "unsupported dtype" "model.norm.weight: dtype I32 is not supported" pack i32 out.moe
variant nodata && edit_st nodata 'h["model.norm.weight"]["data_offsets"][1] += 4'
expect_error "size does not match shape" "model.norm.weight: 516 bytes for shape" pack nodata out.moe
py "$W" safetensors fp8 --arch=deepseek_v3 --fp8 || not_ok "write fp8"
edit_st fp8 'del h["model.layers.1.mlp.experts.0.up_proj.weight_scale_inv"]'
expect_error "FP8 without its scale" "experts.0.up_proj.weight has no model.layers.1.mlp.experts.0.up_proj.weight_scale_inv" pack fp8 out.moe
variant badidx && printf '{"weight_map": {"lm_head.weight": "../etc/passwd"}}' >badidx/model.safetensors.index.json
expect_error "index naming a file outside" "is not a file name in the folder" pack badidx out.moe
variant badtok && printf '{"model": ' >badtok/tokenizer.json
expect_error "malformed tokenizer.json" "malformed JSON" pack badtok out.moe
# DeepSeek group routing that cannot be done (the example of issue 15), refused at import
py "$W" safetensors dsgroups --arch=deepseek_v3 || not_ok "write deepseek folder"
py -c "import json; p = 'dsgroups/config.json'; c = json.load(open(p)); c['topk_group'] = 3; json.dump(c, open(p, 'w'))"
expect_error "DeepSeek topk_group > n_group" "hyperparameter topk_group = 3 is out of range (0..2)" pack dsgroups out.moe
py -c "import json; p = 'dsgroups/config.json'; c = json.load(open(p)); c['topk_group'] = 1; c['n_group'] = 512; json.dump(c, open(p, 'w'))"
expect_error "DeepSeek n_group > 256" "hyperparameter n_group = 512 is out of range" pack dsgroups out.moe
no_output "DeepSeek groups" out.moe
variant hugetok && truncate -s 300M hugetok/tokenizer.json
expect_error "a 300 MB tokenizer.json (sparse)" "hugetok/tokenizer.json: 314572800 bytes, more than the 256 MB" pack hugetok out.moe
expect_error "source missing" "nothere: No such file or directory" pack nothere out.moe

# ---- GGUF ----
py -c "b=bytearray(open('good.gguf','rb').read()); b[0:4]=b'GGUX'; open('magic.gguf','wb').write(b)"
expect_error "GGUF bad magic" "magic.gguf: bad magic" pack magic.gguf out.moe
py "$W" gguf v1.gguf --version=1
expect_error "GGUF version 1" "GGUF version 1 is not supported" pack v1.gguf out.moe
head -c 300 good.gguf >hdr.gguf
expect_error "GGUF truncated in the header" "truncated header" pack hdr.gguf out.moe
py -c "import os, shutil; shutil.copy('good.gguf', 'data.gguf'); os.truncate('data.gguf', os.path.getsize('data.gguf') - 64)"
expect_error "GGUF truncated in the data" "runs past the end of the file" pack data.gguf out.moe
py "$W" gguf iq2.gguf --bad=iq2
expect_error "GGUF IQ2_XXS tensor" "blk.0.attn_v.weight has type IQ2_XXS (16); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4" pack iq2.gguf out.moe
py "$W" gguf arch.gguf --bad=arch
expect_error "GGUF unknown architecture" 'architecture "grok" is not supported' pack arch.gguf out.moe
# patch_gguf FILE.gguf OUT.gguf 'python on bytearray b, with kv(key) -> offset of its type'
patch_gguf() {
	py - "$1" "$2" "$3" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
def kv(key):
    i = b.find(struct.pack("<Q", len(key)) + key)
    assert i > 0, key
    return i + 8 + len(key)
exec(sys.argv[3])
open(sys.argv[2], "wb").write(b)
PY
}
patch_gguf good.gguf hd1.gguf 'struct.pack_into("<I", b, kv(b"llama.rope.dimension_count") + 4, 1); struct.pack_into("<I", b, kv(b"llama.attention.head_count") + 4, 64)'
expect_error "GGUF head_dim 1" "head_dim = 1: rotary embeddings need an even number" pack hd1.gguf out.moe
patch_gguf good.gguf fcount.gguf 'o = kv(b"llama.block_count"); struct.pack_into("<If", b, o, 6, 1e30)'
expect_error "GGUF count as a huge float" "llama.block_count = 1e+30 is not a count" pack fcount.gguf out.moe
patch_gguf good.gguf ncount.gguf 'o = kv(b"llama.expert_count"); struct.pack_into("<Ii", b, o, 5, -8)'
expect_error "GGUF negative count" "llama.expert_count = -8 is not a count" pack ncount.gguf out.moe
patch_gguf good.gguf nan.gguf 'o = kv(b"llama.attention.layer_norm_rms_epsilon"); struct.pack_into("<If", b, o, 6, float("nan"))'
expect_error "GGUF NaN epsilon" "hyperparameter rms_eps is not a number" pack nan.gguf out.moe
patch_gguf good.gguf none.gguf 'struct.pack_into("<Q", b, 8, 0)'
expect_error "GGUF without tensors" "vocab_size missing or zero" pack none.gguf out.moe
# rows x columns that wrap 64 bits must not pass for a size that fits the file
patch_gguf good.gguf wrap.gguf 'i = b.find(b"token_embd.weight") + 17; struct.pack_into("<IQQ", b, i, 2, 1 << 32, 1 << 32)'
expect_error "GGUF dims whose product wraps" "token_embd.weight: data at offset" pack wrap.gguf out.moe
no_output "GGUF errors" out.moe
variant wrapst && edit_st wrapst 'k = next(iter(k for k in h if k != "__metadata__")); h[k]["shape"] = [1 << 40, 1 << 40]; h[k]["data_offsets"] = [0, 0]'
expect_error "safetensors dims whose product wraps" "0 bytes for shape .1099511627776, 1099511627776. of F32" pack wrapst out.moe
no_output "safetensors wrap" out.moe

# ---- packs ----
"$MOE_PACK" synth --no-progress good.moe 2>/dev/null || not_ok "synth"
head -c 5000 good.moe >short.moe
expect_error "truncated pack" "truncated" "$MOE_PACK" --info short.moe
expect_error "not a pack" "pack it first (moe-pack good.gguf" "$MOE_PACK" --verify good.gguf
py -c "b=bytearray(open('good.moe','rb').read()); b[100]^=4; open('sb.moe','wb').write(b)"
expect_error "corrupt superblock" "superblock checksum mismatch" "$MOE_PACK" --info sb.moe

# ---- options ----
expect_error "bad quant type" "unknown type 'q5'" pack -q experts=q5 good out.moe
expect_error "bad quant kind" "unknown tensor kind 'mlp'" pack -q mlp=q4 good out.moe
expect_error "norms stay f32" "norm tensors are always f32" pack -q norm=q8 good out.moe
expect_error "bad alignment" "--align 8K: 4K or 2M" pack --align 8K good out.moe
expect_error "bad zstd level" "--zstd-level 30" pack --zstd-level 30 good out.moe
expect_error "bad preset" "unknown preset 'gpt5'" "$MOE_PACK" synth --preset gpt5 out.moe
no_output "option errors" out.moe

# ---- disk full: a 1 MB tmpfs (root), else a file-size limit (the same write-error path) ----
mkdir small
if mount -t tmpfs -o size=1M tmpfs small 2>/dev/null; then
	expect_error "disk full" "No space left on device" "$MOE_PACK" synth --no-progress small/full.moe
	no_output "disk full" small/full.moe
	umount small
else
	echo "bad_input.sh: no tmpfs (not root): disk full simulated with ulimit -f" >&2
	expect_error "write error" "File too large" sh -c "trap '' XFSZ; ulimit -f 1024; exec '$MOE_PACK' synth --no-progress small/full.moe"
	no_output "write error" small/full.moe
fi
finish
