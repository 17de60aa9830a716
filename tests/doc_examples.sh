#!/bin/sh
# Every command of the README and of the man pages' EXAMPLES, run as written on small
# stand-ins of the files they name (tests/doc_examples.py says how); one check each.
. "$TESTS_DIR/lib.sh"
: "${MOE_BUILDDIR:?run through make check}"
py "$TESTS_DIR/doc_examples.py" "$TESTS_DIR/.." "$MOE_BUILDDIR" "$WORK" >"$WORK/report" 2>&1
status=$?
while read -r result rest; do
	case $result in
	ok) ok ;;
	FAILED) not_ok "$rest" ;;
	esac
done <"$WORK/report"
grep -v '^ok ' "$WORK/report" >&2
check "the documents' commands were all found and run" [ "$status" -eq 0 ]
finish
