#!/bin/sh
# Two kernel mounts of one objcache cluster at once (runs in the nfsvm guest, busybox sh):
# $NFSVM_MNT is node 1's gateway, /mnt2 node 3's (OTHER_PORT). What one writes the other reads
# (close-to-open: the writer closes, the reader opens afterwards). One "PASS name" or
# "FAIL name: why" line per check; NFSVM_SUCCESS only if every check passed. Both mounts use
# actimeo=0,lookupcache=none, so a name or attribute check reads what the servers hold now
# rather than what a client cached (that part is the client's business, not the server's).
#   env: OTHER_PORT (node 3's NFS and MOUNT port), NFILES (default 300)
NFILES=${NFILES:-300}
A=$NFSVM_MNT
B=/mnt2
pass=0; fail=0
ok()  { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi; }
sum() { md5sum "$1" 2>&1 | cut -d' ' -f1; }

mkdir -p $B
nfsvm-mount $B "port=$OTHER_PORT,mountport=$OTHER_PORT,actimeo=0,lookupcache=none" || { echo "FAIL mount-node3"; exit 1; }
ok mount-node3

W=cluster.$$
mkdir "$A/$W" || { echo "FAIL mkdir"; exit 1; }

# --- a file written through node 1, read through node 3 ---
dd if=/dev/urandom of=/tmp/blob bs=1k count=3000 2>/dev/null   # 3 MB: chunked, not inline
cp /tmp/blob "$A/$W/blob"
check big-file-a-to-b "$(sum /tmp/blob)" "$(sum "$B/$W/blob")"
echo small-from-a > "$A/$W/small"
check small-file-a-to-b "small-from-a" "$(cat "$B/$W/small")"

# --- and the other way ---
echo from-b > "$B/$W/from-b"
mkdir "$B/$W/dir-b"
echo nested > "$B/$W/dir-b/nested"
check file-b-to-a "from-b" "$(cat "$A/$W/from-b")"
check nested-b-to-a "nested" "$(cat "$A/$W/dir-b/nested")"

# --- overwrite through one mount, re-read through the other after close ---
echo version-2 > "$A/$W/small"
check overwrite-visible "version-2" "$(cat "$B/$W/small")"
printf 'appended\n' >> "$B/$W/small"
check append-visible "version-2
appended" "$(cat "$A/$W/small")"

# --- many files in many directories (directories spread over the groups) ---
i=0
while [ $i -lt 10 ]; do
    mkdir "$A/$W/d$i"
    j=0
    while [ $j -lt $((NFILES / 10)) ]; do echo "$i.$j" > "$A/$W/d$i/f$j"; j=$((j + 1)); done
    i=$((i + 1))
done
check count-via-b "$NFILES" "$(ls $B/$W/d*/ | grep -c '^f')"
check content-via-b "7.3" "$(cat "$B/$W/d7/f3")"

# --- rename across directories (often across groups), onto an existing file ---
mv "$A/$W/d1/f1" "$A/$W/d2/moved"
check rename-src-gone-b "no" "$([ -e "$B/$W/d1/f1" ] && echo yes || echo no)"
check rename-dst-b "1.1" "$(cat "$B/$W/d2/moved")"
mv -f "$B/$W/d3/f3" "$B/$W/d4/f4"
check rename-over-existing-a "3.3" "$(cat "$A/$W/d4/f4")"
mv "$A/$W/d5" "$A/$W/d6/d5-moved"
check rename-dir-b "5.2" "$(cat "$B/$W/d6/d5-moved/f2")"
if mv "$A/$W/d6" "$A/$W/d6/d5-moved/under" 2>/dev/null; then
    bad dir-under-itself "moving a directory under itself succeeded"
else
    ok dir-under-itself
fi

# --- hard links across directories, counted through the other mount ---
ln "$A/$W/d7/f1" "$A/$W/d8/link"
check link-count-b "2" "$(stat -c %h "$B/$W/d7/f1")"
rm "$B/$W/d7/f1"
check link-survives-a "7.1" "$(cat "$A/$W/d8/link")"
check link-count-after "1" "$(stat -c %h "$A/$W/d8/link")"

# --- rmdir: not empty, then empty ---
if rmdir "$B/$W/d9" 2>/dev/null; then bad rmdir-notempty "rmdir of a full dir succeeded"; else ok rmdir-notempty; fi
rm "$A/$W"/d9/*
rmdir "$B/$W/d9" && ok rmdir-empty || bad rmdir-empty "rmdir failed"
check rmdir-gone-a "no" "$([ -e "$A/$W/d9" ] && echo yes || echo no)"

# --- truncate through one mount ---
truncate -s 1000 "$A/$W/blob"
check truncate-size-b "1000" "$(stat -c %s "$B/$W/blob")"
check truncate-data-b "$(head -c 1000 /tmp/blob | md5sum | cut -d' ' -f1)" "$(sum "$B/$W/blob")"

# --- symlinks and fifos made on one side, seen on the other ---
ln -s d2/moved "$A/$W/sl"
check symlink-b "d2/moved" "$(readlink "$B/$W/sl")"
mkfifo "$B/$W/fifo"
check fifo-a "fifo" "$(stat -c %F "$A/$W/fifo" | sed 's/.*fifo.*/fifo/')"

# --- remove the whole tree through node 3 ---
rm -rf "$B/$W"
check tree-gone-a "no" "$([ -e "$A/$W" ] && echo yes || echo no)"

echo "cluster: $pass passed, $fail failed"
[ $fail -eq 0 ] && echo NFSVM_SUCCESS
