#!/bin/sh
# The NEON kernels: cross-built for AArch64 with Debian's gcc-aarch64-linux-gnu and
# the kernel test run under qemu-user-static (scripts/deps installs both).
. "$TESTS_DIR/lib.sh"
top=$(cd "$TESTS_DIR/.." && pwd)
for tool in aarch64-linux-gnu-gcc qemu-aarch64-static; do # absent: skip (77), as automake counts it
	command -v $tool >/dev/null 2>&1 || { echo "SKIP: $tool missing (scripts/deps installs it)"; exit 77; }
done
check "cross-build for aarch64" aarch64-linux-gnu-gcc -std=gnu11 -O2 -Wall -Wextra -Wno-unused-parameter -Werror \
	-static -I"$top/src" -I"$top/include" "$top/tests/test_kernels.c" "$top"/src/kernels/*.c -lpthread -lm \
	-o "$WORK/test_kernels.arm64"
check "neon kernels under qemu" qemu-aarch64-static "$WORK/test_kernels.arm64"
if grep -q "^neon: tested" "$WORK/out"; then ok; else not_ok "neon implementation not tested"; cat "$WORK/out" >&2; fi
finish
