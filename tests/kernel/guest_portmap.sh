#!/bin/sh
# Mounted through the portmapper (nfsvm --opts port=0,mountport=0: the kernel asks the server's
# portmapper, 10.0.2.2:111, for the NFS and MOUNT ports). With MOUNTPROTO=udp (and the matching
# mountproto=udp option) MOUNT and its portmapper query go over UDP, NFS and its query over TCP. Checks that the mount really was made
# that way, then that it works, and that a second mount (also through the portmapper) sees it.
pass=0; fail=0
ok()  { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi; }

line=$(grep " $NFSVM_MNT nfs " /proc/mounts)
echo "INFO $line"
# an explicit port would be shown as port=N; port=0 means "ask the portmapper"
case ",$line," in *",port="*) bad no-explicit-port "$line";; *) ok no-explicit-port;; esac
# MOUNT over UDP (its portmapper query too): the kernel's NFS client has no NFS over UDP
case ",$line," in *",mountproto=${MOUNTPROTO:-tcp},"*) ok "mountproto-${MOUNTPROTO:-tcp}";;
    *) bad "mountproto-${MOUNTPROTO:-tcp}" "$line";; esac
stats=$(grep -A2 "mounted on $NFSVM_MNT " /proc/self/mountstats | grep 'opts:')
case "$stats" in *"mountport=0,"*) ok mountport-from-portmapper;; *) bad mountport-from-portmapper "$stats";; esac

W=$NFSVM_MNT/portmap.$$
mkdir "$W" && ok mkdir || bad mkdir "failed"
dd if=/dev/urandom of=/tmp/r bs=4096 count=300 2>/dev/null
cp /tmp/r "$W/r" && ok write || bad write "cp failed"
nfsvm-mount /mnt2 && ok second-mount || bad second-mount "nfsvm-mount /mnt2 failed"
if cmp /tmp/r "/mnt2/portmap.$$/r"; then ok read-via-second-mount; else bad read-via-second-mount "differs"; fi
umount /mnt2 || bad umount-second "failed"
rm -rf "$W" && ok cleanup || bad cleanup "rm -rf failed"
echo "portmap: $pass passed, $fail failed"
[ "$fail" = 0 ] || exit 1
echo NFSVM_SUCCESS
