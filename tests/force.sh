#!/bin/sh
# --force replaces only what moe-pack writes: never a source (same inode, through
# any name), never a folder holding files moe-pack does not write, never a file
# that is neither a pack nor a GGUF. Each refusal leaves everything as it was.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
small="--layers 2 --hidden 64 --expert-ff 128 --vocab 128"
check "synth safetensors" "$MOE_PACK" synth $small --format safetensors d
check "synth gguf" "$MOE_PACK" synth $small --format gguf s.gguf
echo "my notes" >d/my_notes.txt
expect_error "--force over a folder with a foreign file" "my_notes.txt" \
	"$MOE_PACK" synth $small --format safetensors --force d
check "... which is still there" grep -qx "my notes" d/my_notes.txt
check "... with the folder as it was" [ -f d/config.json -a -f d/model.safetensors ]
no_output "... and no temporary folder" d.
cksum s.gguf >s.sum
expect_error "--force with the output the source" "is the source" "$MOE_PACK" --force s.gguf s.gguf
ln s.gguf hard.gguf
expect_error "--force with the output a hard link to the source" "is the source" "$MOE_PACK" --force s.gguf hard.gguf
check "... the source is unchanged" sh -c 'cksum s.gguf | cmp -s - s.sum'
expect_error "--force with the output a file of the source folder" "is the source file" \
	"$MOE_PACK" --force d d/model.safetensors
expect_error "--force with the output the source folder" "is the source" "$MOE_PACK" --force d d
echo "keep me" >notes.txt
expect_error "--force over a file that is not a pack" "neither a moemap pack nor a GGUF" \
	"$MOE_PACK" --force s.gguf notes.txt
check "... which is unchanged" grep -qx "keep me" notes.txt
expect_error "--force over a folder, writing a pack" "is a folder" "$MOE_PACK" --force s.gguf d
expect_error "without --force an existing pack is kept" "use --force" "$MOE_PACK" synth $small --format gguf s.gguf
# what --force is for: replacing moe-pack's own outputs
check "pack" "$MOE_PACK" s.gguf m.moe
check "--force replaces a pack" "$MOE_PACK" --force s.gguf m.moe
check "--force replaces a GGUF it wrote" "$MOE_PACK" synth $small --seed 2 --format gguf --force hard.gguf
check "... (a new file; the source, once linked, is untouched)" sh -c 'cksum s.gguf | cmp - s.sum'
rm d/my_notes.txt
check "--force replaces a folder of its own files" "$MOE_PACK" synth $small --format safetensors --shard-size 100K --force d
check "... now in shards" [ -f d/model.safetensors.index.json -a ! -f d/model.safetensors ]
no_output "... and nothing of the old folder left" d.
finish
