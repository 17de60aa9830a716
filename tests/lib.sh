# tests/lib.sh - shared by the shell tests: a scratch folder, and checks that count.
set -u
: "${MOE_PACK:?run through make check}" "${PYTHON3:=/usr/bin/python3}" "${TESTS_DIR:=$(dirname "$0")}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moe-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FAILED=0
PASSED=0
ok() { PASSED=$((PASSED + 1)); }
not_ok() { FAILED=$((FAILED + 1)); echo "FAILED: $*" >&2; }
check() { # check DESCRIPTION COMMAND...
	d=$1
	shift
	if "$@" >"$WORK/out" 2>"$WORK/err"; then ok; else not_ok "$d"; cat "$WORK/out" "$WORK/err" >&2; fi
}
# expect_error DESCRIPTION 'expected words' COMMAND...: non-zero exit, one line on stderr
# containing the words, no crash (exit status below 128).
expect_error() {
	d=$1
	words=$2
	shift 2
	"$@" >"$WORK/out" 2>"$WORK/err"
	st=$?
	lines=$(grep -c . "$WORK/err")
	if [ "$st" -eq 0 ]; then
		not_ok "$d: succeeded"
	elif [ "$st" -ge 128 ]; then
		not_ok "$d: crashed (status $st)"
		cat "$WORK/err" >&2
	elif ! grep -q -- "$words" "$WORK/err"; then
		not_ok "$d: message lacks '$words'"
		cat "$WORK/err" >&2
	elif [ "$lines" -ne 1 ]; then
		not_ok "$d: $lines lines on stderr"
		cat "$WORK/err" >&2
	else
		ok
	fi
}
# no output, no temporary left beside it
no_output() { # no_output DESCRIPTION PATH
	if ls "$2"* >/dev/null 2>&1; then not_ok "$1: left $(ls -d "$2"*)"; else ok; fi
}
py() { "$PYTHON3" "$@"; }
finish() {
	echo "$(basename "$0"): $PASSED passed, $FAILED failed"
	[ "$FAILED" -eq 0 ]
}
