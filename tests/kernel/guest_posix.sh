#!/bin/sh
# POSIX behaviour through the Linux kernel NFSv3 client (runs in the nfsvm guest, busybox sh,
# cwd on the mount). One "PASS name" or "FAIL name: why" line per check; NFSVM_SUCCESS only if
# every check passed. Attributes are re-read after `nfsvm-remount` (a cold client cache), so what
# is checked is what the server stored, not what the client remembers.
#   env: NFILES (default 5000) files in the big directory.
NFILES=${NFILES:-5000}
W=$NFSVM_MNT/posix.$$
pass=0; fail=0
ok()  { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
# check NAME EXPECTED ACTUAL
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi; }
remount() { cd / && nfsvm-remount || { echo "FAIL remount"; exit 1; }; cd "$W" || exit 1; }
t0=$(cut -d' ' -f1 /proc/uptime)
mkdir "$W" && cd "$W" || { echo "FAIL mkdir $W"; exit 1; }

# --- attributes set by chmod, chown, touch -d (SETATTR), visible after a remount ---
echo data > attrs
mkdir attrdir
chmod 0754 attrs; chmod 0701 attrdir
chown 1234:5678 attrs; chown 4321:8765 attrdir
touch -d "2001-02-03 04:05:06" attrs
touch -d "1999-12-31 23:59:58" attrdir
want_attrs=$(TZ=UTC date -d "2001-02-03 04:05:06" +%s)
want_dir=$(TZ=UTC date -d "1999-12-31 23:59:58" +%s)
# --- rename over an existing file ---
echo old > target; echo new > source
mv -f source target
# --- hard links ---
echo linked > h1; ln h1 h2; ln h1 h3; ln h1 h4; rm h4
# --- symlinks ---
echo pointed-at > real
ln -s real rel-link
ln -s "$W/real" abs-link
ln -s does/not/exist dangling
# --- fifo ---
mkfifo fifo
remount

check chmod-file "754" "$(stat -c %a attrs)"
check chmod-dir "701" "$(stat -c %a attrdir)"
check chown-file "1234:5678" "$(stat -c %u:%g attrs)"
check chown-dir "4321:8765" "$(stat -c %u:%g attrdir)"
check touch-d-file-mtime "$want_attrs" "$(stat -c %Y attrs)"
check touch-d-dir-mtime "$want_dir" "$(stat -c %Y attrdir)"
check attrs-content "data" "$(cat attrs)"
check rename-over-existing "new" "$(cat target)"
if [ -e source ]; then bad rename-source-gone "source still exists"; else ok rename-source-gone; fi
check rename-target-nlink "1" "$(stat -c %h target)"
check hardlink-nlink "3" "$(stat -c %h h1)"
check hardlink-same-inode "$(stat -c %i h1)" "$(stat -c %i h3)"
check hardlink-content "linked" "$(cat h2)"
if [ -e h4 ]; then bad hardlink-removed "h4 still exists"; else ok hardlink-removed; fi
rm h2
check hardlink-nlink-after-unlink "2" "$(stat -c %h h3)"
check symlink-readlink "real" "$(readlink rel-link)"
check symlink-abs-readlink "$W/real" "$(readlink abs-link)"
check symlink-follow "pointed-at" "$(cat rel-link)"
check symlink-type "symbolic link" "$(stat -c %F rel-link)"
check symlink-dangling "does/not/exist" "$(readlink dangling)"
if [ -e dangling ]; then bad symlink-dangling-target "resolves"; else ok symlink-dangling-target; fi
check mkfifo-type "fifo" "$(stat -c %F fifo)"
if [ -p fifo ]; then ok mkfifo-is-pipe; else bad mkfifo-is-pipe "test -p false"; fi

# --- a directory of NFILES files, listed after a remount ---
mkdir big
t1=$(cut -d' ' -f1 /proc/uptime)
(cd big && seq 1 "$NFILES" | sed 's/^/file-/' | xargs touch)
t2=$(cut -d' ' -f1 /proc/uptime)
remount
check bigdir-count "$NFILES" "$(ls big | wc -l)"
check bigdir-distinct "$NFILES" "$(ls big | sort -u | wc -l)"
if [ -f big/file-1 ] && [ -f "big/file-$NFILES" ]; then ok bigdir-lookup; else bad bigdir-lookup "no file-1 or file-$NFILES"; fi
check bigdir-nlink "2" "$(stat -c %h big)"
t3=$(cut -d' ' -f1 /proc/uptime)
echo "INFO bigdir create ${NFILES} files: $(echo "$t2 $t1" | awk '{printf "%.1f", $1-$2}')s; list after remount: $(echo "$t3 $t2" | awk '{printf "%.1f", $1-$2}')s"

# --- cp -a of a tree, then diff -r (and modes, sizes, mtimes) after a remount ---
S=/tmp/src.$$
mkdir -p "$S/a/b/c" "$S/empty dir" "$S/sp ace"
dd if=/dev/urandom of="$S/a/rand-1m" bs=1024 count=1024 2>/dev/null
dd if=/dev/urandom of="$S/a/b/rand-odd" bs=1 count=70001 2>/dev/null
dd if=/dev/urandom of="$S/a/b/c/rand-3m" bs=65536 count=50 2>/dev/null
: > "$S/zero"
printf 'x' > "$S/sp ace/one byte"
echo text > "$S/a/text"; chmod 0640 "$S/a/text"; chmod 0750 "$S/a/b"
ln -s b/rand-odd "$S/a/link"
ln "$S/a/text" "$S/a/text-hardlink"
touch -d "2010-10-10 10:10:10" "$S/a/b/rand-odd"
cp -a "$S" tree
remount
if diff -r "$S" tree > /tmp/diff.out 2>&1; then ok cp-a-diff-r; else bad cp-a-diff-r "$(head -5 /tmp/diff.out)"; fi
# a directory's size is the server's business; everything else must match
meta() {
    (cd "$1" && find . ! -type l | sort | while read -r f; do
        if [ -d "$f" ]; then stat -c '%n %a %Y dir' "$f"; else stat -c '%n %a %s %Y %F' "$f"; fi
    done)
}
if [ "$(meta "$S")" = "$(meta tree)" ]; then ok cp-a-modes-sizes-mtimes; else
    meta "$S" > /tmp/m1; meta tree > /tmp/m2
    bad cp-a-modes-sizes-mtimes "$(diff /tmp/m1 /tmp/m2 | head -5 | tr '\n' '|')"
fi
check cp-a-symlink "b/rand-odd" "$(readlink tree/a/link)"
check cp-a-hardlink-nlink "2" "$(stat -c %h tree/a/text)"

# --- clean up, through the server ---
cd /
rm -rf "$W" && ok cleanup || bad cleanup "rm -rf failed"
if [ -e "$W" ]; then bad cleanup-gone "$W still exists"; else ok cleanup-gone; fi
t4=$(cut -d' ' -f1 /proc/uptime)
echo "INFO posix total $(echo "$t4 $t0" | awk '{printf "%.1f", $1-$2}')s"
echo "posix: $pass passed, $fail failed"
[ "$fail" = 0 ] || exit 1
echo NFSVM_SUCCESS
