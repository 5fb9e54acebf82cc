"""The model-based checker (issue 7): the same random operation sequence applied to a local
directory (the model: the host kernel's own file system) and to objcache through NFS, through
libnfs and through the Linux kernel client in nfsvm; any difference in a result or in the final
tree fails with the shortest reproducing sequence found.

    ops.py         operations, their generator, results, comparison (what is and is not compared)
    localfs.py     the local-directory applier, and the errnos POSIX lets an op answer
    nfsfs.py       the libnfs applier (tests/nfsclient.py)
    modelops.c     the guest's executor (one syscall per op, errno by name)
    guest.py       batches, the guest script, nfsvm, the parser of what the guest prints
    kernel.py      the kernel path's driver: one boot for many sequences, ddmin one boot a round
    shrink.py      ddmin (kernel path) and the hypothesis strategy (libnfs path)
    check.py       one sequence on both sides, compared
    servers.py     one node and a 3-group cluster, with 64 KiB chunks

Tests: test_checker.py (the checker itself, with deliberately faulty file systems),
test_model_libnfs.py (integration), test_model_kernel.py (kernel); `make model` runs them long.
"""
