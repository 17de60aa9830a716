#!/bin/sh
# The public API (moe.h): libmoe.so exports exactly the calls moe.h declares;
# examples/generate, built from the installed-style moe.pc with nothing but
# `pkg-config --cflags --libs moe`, prints moe-run's greedy continuation; and
# test_api (batched decode of several sessions, prefix reuse, errors) passes in
# RAM and with the experts streaming under a budget smaller than they are.
. "$TESTS_DIR/lib.sh"
: "${MOE_BUILDDIR:?run through make check}" "${MOE_INCLUDEDIR:?}" "${CC:=cc}" "${DEMO_MODEL:?}"
cd "$WORK"
so="$MOE_BUILDDIR/.libs/libmoe.so"
check "libmoe.so is built" [ -f "$so" ]
nm -D --defined-only "$so" | awk '{print $3}' | sort >exported
sed -n 's/^MOE_API [^(]*[ *]\(moe_[a-z0-9_]*\)(.*/\1/p' "$MOE_INCLUDEDIR/moe.h" | sort >declared
check "every exported symbol is declared in moe.h, and every declaration exported" cmp exported declared
check "... and there are some: $(wc -l <declared)" [ "$(wc -l <declared)" -gt 60 ]

"$MOE_PACK" -q q8 "$DEMO_MODEL" kjv.moe >/dev/null 2>&1
check "the demo model packs" [ -f kjv.moe ]
flags=$(PKG_CONFIG_PATH="$MOE_BUILDDIR" pkg-config --define-variable=libdir="$MOE_BUILDDIR/.libs" \
	--define-variable=includedir="$MOE_INCLUDEDIR" --cflags --libs moe)
# (a sanitizer build passes its -fsanitize flags in LDFLAGS)
check "cc generate.c \$(pkg-config --cflags --libs moe)" $CC ${LDFLAGS:-} -o generate "$TESTS_DIR/../examples/generate.c" $flags
check "... is linked to libmoe.so" sh -c "readelf -d generate | grep -q 'NEEDED.*libmoe.so'"
LD_LIBRARY_PATH="$MOE_BUILDDIR/.libs" ./generate kjv.moe 'And God said' 40 >gen.txt 2>gen.err
check "generate runs" [ -s gen.txt ]
"$MOE_RUN" -m kjv.moe -p 'And God said' -n 40 >run.txt 2>run.err
printf '\n' >>run.txt # generate ends its text with a newline
check "generate prints moe-run's greedy continuation: $(head -c 40 run.txt | tr '\n' ' ')..." cmp gen.txt run.txt
# the copy make check built (libtool's wrapper finds the uninstalled library)
check "make check's examples/generate agrees" sh -c "'$MOE_BUILDDIR/examples/generate' kjv.moe 'And God said' 40 | cmp - run.txt"
expect_error "a missing pack is one line" "no.moe" env LD_LIBRARY_PATH="$MOE_BUILDDIR/.libs" ./generate no.moe hi
check "usage" sh -c "LD_LIBRARY_PATH='$MOE_BUILDDIR/.libs' ./generate; [ \$? -eq 2 ]"

check "test_api in RAM" "$MOE_BUILDDIR/tests/test_api" kjv.moe
# 7 sessions of 64 tokens + dense weights leave 3.8 MB of the 10 MB of experts
check "test_api with the experts streaming (--ram-budget 12M)" "$MOE_BUILDDIR/tests/test_api" kjv.moe 12M
cp "$WORK/out" budget.out
check "... which read experts from disk" sh -c "grep -q 'misses' budget.out && ! grep -q ' 0 misses' budget.out"
finish
