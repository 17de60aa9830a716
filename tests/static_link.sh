#!/bin/sh
# moe.pc is complete: a program linked with -static from nothing but
# `pkg-config --static --cflags --libs moe` (libmoe.a and every library it
# needs) builds, runs, and reads a pack as moe-pack does.
. "$TESTS_DIR/lib.sh"
: "${MOE_BUILDDIR:?run through make check}" "${MOE_INCLUDEDIR:?run through make check}" "${CC:=cc}" "${LDFLAGS:=}"
cd "$WORK"
check "libmoe.a is built" [ -f "$MOE_BUILDDIR/.libs/libmoe.a" ]
# the uninstalled moe.pc, pointed at the build tree instead of the prefix
flags=$(PKG_CONFIG_PATH="$MOE_BUILDDIR" pkg-config --define-variable=libdir="$MOE_BUILDDIR/.libs" \
	--define-variable=includedir="$MOE_INCLUDEDIR" --static --cflags --libs moe)
check "pkg-config --static --cflags --libs moe" [ -n "$flags" ]
# a program links only the members of libmoe.a it calls; to know that moe.pc
# lists what every member needs, link them all once
whole=$(echo " $flags " | sed 's/ -lmoe / -Wl,--whole-archive -lmoe -Wl,--no-whole-archive /')
case "${LDFLAGS:-}" in
*-fsanitize*) # the sanitizer runtimes cannot be linked -static: every library from
	# pkg-config still comes from its archive, only glibc's (libc, libm, libpthread)
	# and the runtimes are shared, as a glibc archive cannot join a dynamic link
	glibc=$(for f in $flags; do case $f in -lm | -lpthread | -ldl | -lrt) printf ' %s' "$f" ;; esac; done)
	others() { for f in "$@"; do case $f in -lm | -lpthread | -ldl | -lrt) ;; *) printf ' %s' "$f" ;; esac; done; }
	check "cc prog.c -Wl,-Bstatic \$(pkg-config --static ...)" \
		$CC $LDFLAGS -o prog "$TESTS_DIR/static_link.c" -Wl,-Bstatic $(others $flags) -Wl,-Bdynamic $glibc
	check "... and with every member of libmoe.a" \
		$CC $LDFLAGS -o whole "$TESTS_DIR/static_link.c" -Wl,-Bstatic $(others $whole) -Wl,-Bdynamic $glibc ;;
*)
	check "cc -static prog.c \$(pkg-config --static ...)" $CC -static -o prog "$TESTS_DIR/static_link.c" $flags
	check "... is a static executable" sh -c '! readelf -l prog | grep -q "program interpreter"'
	check "... and with every member of libmoe.a" $CC -static -o whole "$TESTS_DIR/static_link.c" $whole ;;
esac
check "synth" "$MOE_PACK" synth --layers 2 --hidden 64 --expert-ff 128 --vocab 128 m.moe
"$MOE_PACK" --info --json m.moe >info.json
want=$(py -c 'import json, sys; k = json.load(open(sys.argv[1]))["kinds"]
print("%d tensors, %d experts" % (sum(v.get("tensors", 0) for v in k.values()), k["experts"]["blobs"]))' info.json 2>&1)
check "it reads the pack: $want" sh -c "./prog m.moe | grep -qx '$want'"
expect_error "and reports errors through moe_last_error" "not a moemap pack" ./prog info.json
finish
