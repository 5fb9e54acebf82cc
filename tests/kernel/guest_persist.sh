#!/bin/sh
# Data that survives a server restart (runs in the nfsvm guest, busybox sh, cwd on the mount).
#   PHASE=write   writes files, a symlink, a hard link and their sha256 sums into persist/
#   PHASE=verify  (after the host restarted the server, in a new VM) checks all of it
# One "PASS name" / "FAIL name: why" line per check; NFSVM_SUCCESS only if all passed.
D=$NFSVM_MNT/persist
pass=0; fail=0
ok()  { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi; }

case "$PHASE" in
write)
    mkdir -p "$D/sub/deeper" || exit 1
    cd "$D" || exit 1
    dd if=/dev/urandom of=big bs=1048576 count="${BIG_MB:-20}" 2>/dev/null
    dd if=/dev/urandom of=sub/odd bs=1 count=12347 2>/dev/null
    dd if=/dev/urandom of=sub/deeper/small bs=512 count=3 2>/dev/null
    : > empty
    echo hello > hello; chmod 0600 hello; chown 42:43 hello
    ln hello hello-link
    ln -s sub/odd sym
    sha256sum big sub/odd sub/deeper/small empty hello > SUMS
    sync
    check written "$(wc -l < SUMS)" "5"
    ;;
verify)
    cd "$D" || { echo "FAIL persist-dir-missing"; exit 1; }
    if sha256sum -c SUMS > /tmp/sums.out 2>&1; then ok checksums
    else bad checksums "$(grep -v ': OK$' /tmp/sums.out | head -5 | tr '\n' '|')"; fi
    check big-size "$((${BIG_MB:-20} * 1048576))" "$(stat -c %s big)"
    check attrs "600 42:43" "$(stat -c '%a %u:%g' hello)"
    check hardlink-nlink "2" "$(stat -c %h hello)"
    check hardlink-inode "$(stat -c %i hello)" "$(stat -c %i hello-link)"
    check symlink "sub/odd" "$(readlink sym)"
    check listing "SUMS big empty hello hello-link sub sym" "$(ls | tr '\n' ' ' | sed 's/ $//')"
    cd / && rm -rf "$D" && ok cleanup || bad cleanup "rm -rf failed"
    ;;
*) echo "FAIL PHASE must be write or verify"; exit 1;;
esac
echo "persist-$PHASE: $pass passed, $fail failed"
[ "$fail" = 0 ] || exit 1
echo NFSVM_SUCCESS
