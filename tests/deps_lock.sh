#!/bin/sh
# scripts/deps waits for another apt run instead of failing: with apt-get, dpkg-query,
# sudo and sleep replaced by stand-ins, a package is missing and "apt-get update"
# finds the lists locked twice; deps must wait, then install. An error that is not a
# lock must fail at once. Nothing is installed.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
mkdir bin
cat >bin/dpkg-query <<'SH'
#!/bin/sh
case "$*" in *liburing-dev*) echo "unknown ok not-installed" ;; *) echo "install ok installed" ;; esac
SH
cat >bin/apt-get <<'SH'
#!/bin/sh
echo "$*" >>"$LOG"
case "$*" in
*update*)
	n=$(grep -c update "$LOG")
	if [ "$n" -le "${LOCKED:-0}" ]; then
		echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2
		exit 100
	fi
	[ -n "${BROKEN:-}" ] && { echo "E: The repository is not signed." >&2; exit 100; }
	exit 0 ;;
*install*) exit 0 ;;
esac
SH
printf '#!/bin/sh\nexec "$@"\n' >bin/sudo
printf '#!/bin/sh\necho "sleep $*" >>"$LOG"\n' >bin/sleep
chmod +x bin/*
deps="$TESTS_DIR/../scripts/deps"
PATH="$WORK/bin:$PATH" LOG="$WORK/log" LOCKED=2 "$deps" >out.txt 2>&1
check "deps waits for the package lists' lock" [ $? -eq 0 ]
check "... says so once" [ "$(grep -c 'waiting for another apt run' out.txt)" -eq 1 ]
check "... retried update twice, then installed only what is missing" sh -c \
	"[ \$(grep -c update log) -eq 3 ] && [ \$(grep -c '^sleep' log) -eq 2 ] && grep -q 'install -y -qq  *liburing-dev\$' log"
check "... and waits for dpkg's own lock (DPkg::Lock::Timeout)" grep -q 'DPkg::Lock::Timeout=600 install' log
rm -f log
PATH="$WORK/bin:$PATH" LOG="$WORK/log" BROKEN=1 "$deps" >out.txt 2>&1
check "another apt error fails at once" [ $? -ne 0 -a "$(grep -c update log)" -eq 1 ]
check "... showing apt's message" grep -q 'not signed' out.txt
rm -f log
PATH="$WORK/bin:$PATH" LOG="$WORK/log" LOCKED=1000 "$deps" >out.txt 2>&1
check "a lock held for 10 minutes fails" [ $? -ne 0 ]
check "... after 120 waits of 5 s, naming the lock" sh -c \
	"grep -q 'held the package lists. lock for 600 s' out.txt && [ \$(grep -c '^sleep' log) -eq 120 ]"
finish
