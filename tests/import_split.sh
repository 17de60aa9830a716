#!/bin/sh
# Split GGUFs (NAME-00001-of-0000N.gguf, as llama.cpp's gguf-split writes them: every
# key in the first part, split.no / split.count / split.tensors.count in all): given
# the first part, moe-pack reads every part and packs the same model as from one
# file. Parts that are missing, out of place or from another split are named.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
W="$TESTS_DIR/write_model.py"
TYPES=attn=Q4_K,experts=Q4_K,embed=Q6_K,output=Q6_K
check "one file" py "$W" gguf one.gguf --arch=mixtral256 --types=$TYPES
check "three parts" py "$W" gguf m.gguf --arch=mixtral256 --types=$TYPES --split=3
check "pack one" "$MOE_PACK" --no-progress --zstd-min-saving 100 one.gguf one.moe
check "pack split" "$MOE_PACK" --no-progress --zstd-min-saving 100 m-00001-of-00003.gguf split.moe
check "same model" py - <<PY
import sys; sys.path.insert(0, "$TESTS_DIR")
import moepack_ref as r
a, b = r.Pack("one.moe"), r.Pack("split.moe")
assert set(a.tensors) == set(b.tensors) and len(a.tensors) == 17
for n in a.tensors:
    assert a.tensor_bytes(n) == b.tensor_bytes(n), n
    assert a.tensors[n]["type"] == b.tensors[n]["type"], n
assert set(a.experts) == set(b.experts) and len(a.experts) == 8
for k in a.experts:
    assert a.expert_raw(*k) == b.expert_raw(*k), k
PY
expect_error "second part given" "m-00002-of-00003.gguf is part 2 of a 3-part GGUF: give the first part" \
	"$MOE_PACK" --no-progress m-00002-of-00003.gguf x.moe
no_output "second part given" x.moe
mv m-00003-of-00003.gguf keep3
expect_error "missing part" "m-00003-of-00003.gguf" "$MOE_PACK" --no-progress m-00001-of-00003.gguf x.moe
no_output "missing part" x.moe
# a part of another split of the same model, in place of part 3
check "two parts" py "$W" gguf o.gguf --arch=mixtral256 --types=$TYPES --split=2
cp o-00002-of-00002.gguf m-00003-of-00003.gguf
expect_error "foreign part" "m-00003-of-00003.gguf: split.no 1, split.count 2, .*not part 2 of" \
	"$MOE_PACK" --no-progress m-00001-of-00003.gguf x.moe
no_output "foreign part" x.moe
mv keep3 m-00003-of-00003.gguf
# the first part of a split renamed: its name no longer says where the others are
cp m-00001-of-00003.gguf renamed.gguf
expect_error "renamed first part" "split.count is 3 but the file is not named NAME-00001-of-00003.gguf" \
	"$MOE_PACK" --no-progress renamed.gguf x.moe
no_output "renamed first part" x.moe
finish
