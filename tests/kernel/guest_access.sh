#!/bin/sh
# Access control through the kernel client (tests/kernel/test_kernel_access.py). nfsvm mounts
# "/" (open: insecure, no root squash); the script mounts the other exports itself:
#   /sq   root squashed (anon 4242:4343)  /ro  read-only   /deny  clients 10.9.9.0/24 only
#   /sec  secure (reserved source ports only), which qemu's user networking cannot give:
#         slirp connects to the host from an ordinary port whatever port the guest used.
# The guest runs as root with AUTH_SYS (uid 0, gid 0).
pass=0; fail=0
ok()  { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi; }
mnt() { mkdir -p "/m$1" && nfsmount "$NFSVM_SERVER:$1" "/m$1" "$NFSVM_MOUNTOPTS${2:+,$2}"; }

# Root squash: what root creates belongs to anon; root cannot give it away (NFS3ERR_PERM).
if mnt /sq; then
    ok mount-sq
    echo x > /m/sq/by-root && ok create-as-squashed-root || bad create-as-squashed-root failed
    check owner-is-anon "4242:4343" "$(stat -c %u:%g /m/sq/by-root)"
    err=$(chown 0:0 /m/sq/by-root 2>&1) && bad chown-refused "chown worked" || {
        case "$err" in *"not permitted"*) ok chown-refused-eperm;; *) bad chown-refused-eperm "$err";; esac; }
    mkdir /m/sq/d && check dir-owner-is-anon "4242:4343" "$(stat -c %u:%g /m/sq/d)"
    umount /m/sq
else
    bad mount-sq "nfsmount failed"
fi
# The same file seen through the unsquashed export "/".
check owner-through-open-export "4242:4343" "$(stat -c %u:%g "$NFSVM_MNT/sq/by-root")"

# Read-only: reads work; every change is EROFS.
if mnt /ro; then
    ok mount-ro
    check read "read me" "$(cat /m/ro/hello)"
    err=$( (echo x > /m/ro/new) 2>&1) && bad create-erofs "created" || {
        case "$err" in *"Read-only"*) ok create-erofs;; *) bad create-erofs "$err";; esac; }
    for op in "rm -f /m/ro/hello" "mkdir /m/ro/d" "chmod 600 /m/ro/hello" "touch /m/ro/hello" \
              "mv /m/ro/hello /m/ro/moved"; do
        err=$($op 2>&1) && bad "erofs: $op" "it worked" || {
            case "$err" in *"Read-only"*) ok "erofs: $op";; *) bad "erofs: $op" "$err";; esac; }
    done
    check still-there "read me" "$(cat /m/ro/hello)"
    umount /m/ro
else
    bad mount-ro "nfsmount failed"
fi

# An allow-list without this client: the mount is refused (MNT3ERR_ACCES: EACCES).
err=$(mnt /deny 2>&1) && { bad deny-refused "mounted"; umount /m/deny; } || {
    case "$err" in *"denied"*|*"ermission"*) ok deny-refused-eacces;; *) bad deny-refused-eacces "$err";; esac; }

# Secure export: refused, with or without noresvport, since slirp's host-side port is never
# reserved (the host test checks that the server saw ports >= 1024 and logged insecure_port).
for o in "" noresvport; do
    err=$(mnt /sec "$o" 2>&1) && { bad "sec-refused${o:+-$o}" "mounted"; umount /m/sec; } || \
        ok "sec-refused${o:+-$o} ($err)"
done

echo "access: $pass passed, $fail failed"
[ "$fail" = 0 ] || exit 1
echo NFSVM_SUCCESS
