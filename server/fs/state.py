"""The file system state machine: records in, LevelDB changes out.

Rules:
- `apply(record, view, changes, index)` is pure: it reads the current state only through `view`
  (plus what earlier records of the same batch wrote into `changes`), reads no clock and does no
  I/O. Every value it writes comes from the record or the state, so all replicas agree.
- `changes` collects the effects: the LevelDB puts and deletes (one atomic write batch, which
  also carries the applied index, so state and index never disagree after a crash), the decoded
  values for the caller's caches, and the data effects (chunks to delete or trim) that the caller
  performs after the batch is durable.
- A record that does not fit the state (linking over an existing name, unlinking a missing one)
  is the proposer's bug: StateError, and the caller drops the whole batch. In the cluster the
  proposer is a gateway that read the state optimistically, so the same error is a normal
  refusal: StateError.reason (EEXIST, ENOENT, ENOTEMPTY, STALE) is the transaction's abort
  reason (server/cluster/fsops.py) and the gateway re-reads and rebuilds.
- `changes.effects` lists every data effect (chunk writes, trims, deletes) in record order, for
  the cluster's runtime; LocalBackend uses the `delete_data` / `trim_data` summaries.
- The vocabulary (StateError, effects, View, Changes, KvView) is in server/fs/changes.py; the
  write-back key table's records are applied by server/fs/keytable.py.
"""

from __future__ import annotations

from collections.abc import Callable

from nfs_gateway.backend import FileType
from server.fs import keys, keytable
from server.fs.changes import (
    EEXIST,
    ENOENT,
    ENOTEMPTY,
    FIRST_COOKIE,
    UNMATERIALIZED,
    AdoptEffect,
    Changes,
    DeleteEffect,
    KvView,
    StateError,
    TrimEffect,
    View,
    WriteEffect,
)
from server.fs.records import (
    AdjustLinks,
    ChunkDelete,
    ChunkTrim,
    ChunkWrite,
    CreateInode,
    Dirent,
    ExpectChunk,
    ExpectInode,
    Inode,
    KeyClaim,
    KeyGone,
    KeyHold,
    KeyLive,
    KeyRelease,
    KeyUnclaim,
    LinkDirent,
    MaterializeChunk,
    Multi,
    SetAttr,
    SetClean,
    SetListed,
    SetName,
    SetOrigin,
    SetParent,
    UnInline,
    UnlinkDirent,
    Unpin,
    WriteInline,
    WriteMeta,
    replace_inode,
)
from storage.kv import KvStore

_SUID_SGID = 0o6000  # set-user-ID and set-group-ID: a WRITE may clear them (clear_suid)


def apply(record: object, view: View, changes: Changes, index: int) -> None:
    """Apply one record (a Multi applies all of its records) and record the applied index."""
    _apply_one(record, view, changes)
    if index:
        changes.put_meta(keys.APPLIED_INDEX, index)


def _apply_one(record: object, view: View, changes: Changes) -> None:
    handler = _HANDLERS.get(type(record))
    if handler is None:
        raise StateError(f"no handler for {type(record).__name__}")
    handler(record, view, changes)


def _live(view: View, changes: Changes, ino: int) -> Inode:
    inode = changes.inode(view, ino)
    if inode is None:
        raise StateError(f"inode {ino} does not exist", ENOENT)
    return inode


def _live_dir(view: View, changes: Changes, ino: int) -> Inode:
    inode = _live(view, changes, ino)
    if inode.ftype != FileType.DIR:
        raise StateError(f"inode {ino} is not a directory")
    return inode


def _create_inode(r: CreateInode, view: View, changes: Changes) -> None:
    if changes.inode(view, r.ino) is not None:
        raise StateError(f"inode {r.ino} exists")
    t = r.time_ns
    changes.put_inode(
        Inode(
            ino=r.ino,
            gen=r.gen,
            ftype=r.ftype,
            mode=r.mode & 0o7777,
            uid=r.uid,
            gid=r.gid,
            size=r.size,
            nlink=r.nlink,
            rdev=r.rdev,
            atime_ns=t,
            mtime_ns=t,
            ctime_ns=t,
            target=r.target,
            parent=r.parent,
            verf=r.verf,
            next_cookie=FIRST_COOKIE if r.ftype == FileType.DIR else 0,
            chunk_size=r.chunk_size,
            store=r.store,
            pname=r.pname,
            dver=1 if r.store else 0,  # made in a bound directory: the bucket lacks it
            cdirty=bool(r.store),
        )
    )
    if r.ino >= changes.meta_int(view, keys.NEXT_INO):
        changes.put_meta(keys.NEXT_INO, r.ino + 1)
    changes.put_meta(keys.INODE_COUNT, changes.meta_int(view, keys.INODE_COUNT) + 1)


def _link_dirent(r: LinkDirent, view: View, changes: Changes) -> None:
    d = _live_dir(view, changes, r.dir_ino)
    if changes.dirent(view, r.dir_ino, r.name) is not None:
        raise StateError(f"{r.name!r} exists in {r.dir_ino}", EEXIST)
    changes.put_dirent(r.dir_ino, r.name, Dirent(r.ino, d.next_cookie, r.ftype))
    subdir = 1 if r.ftype == FileType.DIR else 0  # the new directory's `..`
    changes.put_inode(
        replace_inode(
            d,
            next_cookie=d.next_cookie + 1,
            nlink=d.nlink + subdir,
            mtime_ns=r.time_ns,
            ctime_ns=r.time_ns,
        )
    )


def _unlink_dirent(r: UnlinkDirent, view: View, changes: Changes) -> None:
    d = _live_dir(view, changes, r.dir_ino)
    old = changes.dirent(view, r.dir_ino, r.name)
    if old is None:
        raise StateError(f"{r.name!r} missing in {r.dir_ino}", ENOENT)
    if r.expect_ino and old.ino != r.expect_ino:
        raise StateError(f"{r.name!r} in {r.dir_ino} is {old.ino}, not {r.expect_ino}")
    changes.delete_dirent(r.dir_ino, r.name, old)
    subdir = 1 if old.ftype == FileType.DIR else 0
    changes.put_inode(
        replace_inode(d, nlink=d.nlink - subdir, mtime_ns=r.time_ns, ctime_ns=r.time_ns)
    )


def _adjust_links(r: AdjustLinks, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    nlink = inode.nlink + r.delta
    if nlink < 0:
        raise StateError(f"inode {r.ino}: nlink {inode.nlink} {r.delta:+d}")
    if nlink > 0:
        changes.put_inode(replace_inode(inode, nlink=nlink, ctime_ns=r.time_ns))
        return
    changes.delete_inode(r.ino)
    changes.put_meta(keys.INODE_COUNT, changes.meta_int(view, keys.INODE_COUNT) - 1)
    if inode.inline:
        changes.delete_inline(r.ino)
    elif inode.ftype == FileType.REG:
        changes.delete_data[r.ino] = inode.size
        changes.trim_data.pop(r.ino, None)
        changes.effects.append(DeleteEffect(r.ino))
    if inode.ftype == FileType.REG:
        # Its chunks' marks go with the files: they were left behind in the inode's own
        # group, a leak of one key per chunk ever written (found by the fault campaign).
        _unmark_chunks(view, changes, r.ino, 0)


def _set_parent(r: SetParent, view: View, changes: Changes) -> None:
    inode = _live_dir(view, changes, r.ino)
    changes.put_inode(replace_inode(inode, parent=r.parent, ctime_ns=r.time_ns))


def _set_attr(r: SetAttr, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    new = replace_inode(
        inode,
        mode=inode.mode if r.mode is None else r.mode & 0o7777,
        uid=inode.uid if r.uid is None else r.uid,
        gid=inode.gid if r.gid is None else r.gid,
        size=inode.size if r.size is None else r.size,
        atime_ns=inode.atime_ns if r.atime_ns is None else r.atime_ns,
        mtime_ns=inode.mtime_ns if r.mtime_ns is None else r.mtime_ns,
        ctime_ns=r.ctime_ns,
        # Bucket bytes past a truncation are gone for good: growing again reads zeros there.
        obase=inode.obase if r.size is None else min(inode.obase, r.size),
        dver=inode.dver + 1,
        cdirty=inode.cdirty or (r.size is not None and r.size != inode.size),
    )
    if r.size is not None and inode.ftype != FileType.REG:
        raise StateError(f"inode {r.ino}: size of a {inode.ftype.name}")
    if r.size is not None and inode.inline:
        blob = changes.inline(view, r.ino)
        if len(blob) > r.size:
            changes.put_inline(r.ino, blob[: r.size])  # growing: the missing tail reads as 0
    elif r.size is not None and r.size != inode.size:
        # Shrinking drops the tail; growing must read zeros where stale bytes might remain.
        keep = min(inode.size, r.size)
        changes.trim(r.ino, inode.chunk_size, keep)
        if getattr(view, "marked_chunks", None) is not None:  # LocalBackend keeps no marks
            _trim_marks(view, changes, r.ino, inode.chunk_size, keep)
    changes.put_inode(new)


def _write_meta(r: WriteMeta, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    if inode.inline:
        raise StateError(f"inode {r.ino}: chunk write to an inline file")
    mode = inode.mode & ~_SUID_SGID if r.clear_suid else inode.mode
    changes.put_inode(
        replace_inode(
            inode,
            size=max(inode.size, r.end),
            mode=mode,
            mtime_ns=r.time_ns,
            ctime_ns=r.time_ns,
            dver=inode.dver + 1,
            cdirty=True,
        )
    )


def _write_inline(r: WriteInline, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    if inode.ftype != FileType.REG or not (inode.inline or inode.size == 0):
        raise StateError(f"inode {r.ino}: inline write to a chunked or non-regular file")
    blob = changes.inline(view, r.ino)
    end = r.offset + len(r.data)
    head = blob[: r.offset] + bytes(max(0, r.offset - len(blob)))
    changes.put_inline(r.ino, head + r.data + blob[end:])
    mode = inode.mode & ~_SUID_SGID if r.clear_suid else inode.mode
    changes.put_inode(
        replace_inode(
            inode,
            size=max(inode.size, end),
            mode=mode,
            mtime_ns=r.time_ns,
            ctime_ns=r.time_ns,
            inline=True,
            dver=inode.dver + 1,
            cdirty=True,
        )
    )


def _uninline(r: UnInline, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    if not inode.inline:
        raise StateError(f"inode {r.ino} is not inline")
    if r.to_chunk:
        blob = changes.inline(view, r.ino)
        if blob:
            changes.effects.append(WriteEffect(r.ino, inode.chunk_size, 0, blob))
            _bump_chunk(view, changes, r.ino, 0)
    changes.delete_inline(r.ino)
    changes.put_inode(replace_inode(inode, inline=False))


def _chunk_write(r: ChunkWrite, view: View, changes: Changes) -> None:
    if not (r.offset >= 0 and r.offset + len(r.data) <= r.chunk_size):
        raise StateError(f"chunk write of {len(r.data)} at {r.offset} past chunk {r.chunk_size}")
    offset = r.index * r.chunk_size + r.offset
    changes.effects.append(WriteEffect(r.ino, r.chunk_size, offset, r.data))
    _bump_chunk(view, changes, r.ino, r.index)


def _bump_chunk(view: View, changes: Changes, ino: int, index: int) -> None:
    """The chunk's bytes here changed: it is pinned (the replicated truth), at a new version
    (so an Unpin for the bytes write-back uploaded before no longer applies). The version is
    the group's next (keys.CHUNK_VERSION), never the chunk's own plus one: a truncate or an
    unpin deletes the mark, and counting again from 1 let a delayed Unpin of the bytes before
    match the bytes after, which then counted as a clean copy and were evicted: an
    acknowledged write read back as zeros (found by the fault campaign, FINDINGS.md 6)."""
    version = changes.meta_int(view, keys.CHUNK_VERSION) + 1
    changes.put_meta(keys.CHUNK_VERSION, version)
    changes.put_meta(keys.materialized_key(ino, index), version)


def _chunk_trim(r: ChunkTrim, view: View, changes: Changes) -> None:
    changes.effects.append(TrimEffect(r.ino, r.chunk_size, r.keep))
    _trim_marks(view, changes, r.ino, r.chunk_size, r.keep)


def _trim_marks(view: View, changes: Changes, ino: int, chunk_size: int, keep: int) -> None:
    """The marks after a trim to `keep` bytes (ChunkTrim in a chunk group, SetAttr in the
    inode's own: that one left them, found by the fault campaign). A chunk wholly past `keep`
    is deleted; the chunk `keep` falls in stays (trimmed), its remaining bytes still the
    materialized ones, at a new version (no Unpin of the bytes before matches them)."""
    first_gone = -(-keep // chunk_size) if chunk_size > 0 else 0
    _unmark_chunks(view, changes, ino, first_gone)
    kept = first_gone - 1  # the chunk `keep` falls in, if it falls inside one
    if chunk_size > 0 and keep % chunk_size and changes.meta_int(
            view, keys.materialized_key(ino, kept)):
        _bump_chunk(view, changes, ino, kept)


def _chunk_delete(r: ChunkDelete, view: View, changes: Changes) -> None:
    changes.effects.append(DeleteEffect(r.ino))
    _unmark_chunks(view, changes, r.ino, 0)


def _unmark_chunks(view: View, changes: Changes, ino: int, first: int) -> None:
    marked = getattr(view, "marked_chunks", None)
    for index in marked(ino) if marked is not None else ():
        if index >= first:
            changes.delete_meta(keys.materialized_key(ino, index))
    prefix = keys.materialized_prefix(ino)
    for key, value in list(changes.meta.items()):  # marked earlier in this batch
        if value and key.startswith(prefix) and keys.parse_materialized_key(key)[1] >= first:
            changes.delete_meta(key)


def _set_origin(r: SetOrigin, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    # The bucket holds this version of the inode now: clean.
    new = replace_inode(inode, store=r.store, okey=r.okey, etag=r.etag, cver=inode.dver,
                              cdirty=False)
    if inode.store and not r.store:  # unbound: out of the write-back index too
        changes.put_raw(keys.dirty_key(r.ino), None)
    if r.size >= 0:
        if inode.ftype != FileType.REG or inode.inline:
            raise StateError(f"inode {r.ino}: bucket size of a {inode.ftype.name}")
        new = replace_inode(new, size=r.size, obase=r.size)
        # Bytes of an earlier version held here are stale now: drop them (and their marks).
        changes.effects.append(TrimEffect(r.ino, inode.chunk_size, 0))
        _unmark_chunks(view, changes, r.ino, 0)
    if r.mtime_ns:
        new = replace_inode(new, mtime_ns=r.mtime_ns, ctime_ns=max(r.mtime_ns,
                                                                         inode.ctime_ns))
    changes.put_inode(new)


def _set_name(r: SetName, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    changes.put_inode(replace_inode(inode, parent=r.parent, pname=r.pname,
                                          ctime_ns=r.time_ns, dver=inode.dver + 1))


def _set_clean(r: SetClean, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    if inode.dver != r.dver:
        raise StateError(f"inode {r.ino}: version {inode.dver}, flushed {r.dver}")
    new = replace_inode(inode, cver=r.dver, cdirty=False, okey=r.okey, etag=r.etag)
    if inode.ftype == FileType.REG:
        # The object is the file now: its first `size` bytes (all of them) are the bucket's,
        # and every chunk stays as it is (materialized chunks hold exactly those bytes).
        new = replace_inode(new, obase=r.size)
    changes.put_inode(new)


def _unpin(r: Unpin, view: View, changes: Changes) -> None:
    key = keys.materialized_key(r.ino, r.index)
    if changes.meta_int(view, key) != r.version:
        return  # written since it was uploaded (or unpinned already): stays as it is
    changes.delete_meta(key)
    changes.effects.append(AdoptEffect(r.ino, r.index, r.etag))


def _set_listed(r: SetListed, view: View, changes: Changes) -> None:
    inode = _live_dir(view, changes, r.ino)
    changes.put_inode(replace_inode(inode, listed_ns=r.listed_ns))


def _materialize_chunk(r: MaterializeChunk, view: View, changes: Changes) -> None:
    key = keys.materialized_key(r.ino, r.index)
    if changes.meta_int(view, key):
        return  # already local: its bytes may be newer than this base
    if len(r.data) > r.chunk_size:
        raise StateError(f"materialized chunk of {len(r.data)} bytes past {r.chunk_size}")
    # The whole chunk: its base, and zeros to its end, so no stale byte of an earlier
    # (evicted, clean) copy survives in the file.
    data = r.data.ljust(r.chunk_size, b"\0")
    changes.effects.append(WriteEffect(r.ino, r.chunk_size, r.index * r.chunk_size, data))
    _bump_chunk(view, changes, r.ino, r.index)


def _expect_chunk(r: ExpectChunk, view: View, changes: Changes) -> None:
    if not changes.meta_int(view, keys.materialized_key(r.ino, r.index)):
        raise StateError(f"chunk {r.index} of {r.ino} is not materialized", UNMATERIALIZED)


def _expect_inode(r: ExpectInode, view: View, changes: Changes) -> None:
    inode = _live(view, changes, r.ino)
    if r.gen and inode.gen != r.gen:
        raise StateError(f"inode {r.ino}: generation {inode.gen}, expected {r.gen}")
    if r.nlink >= 0 and inode.nlink != r.nlink:
        raise StateError(f"inode {r.ino}: nlink {inode.nlink}, expected {r.nlink}")
    if r.parent >= 0 and inode.parent != r.parent:
        raise StateError(f"inode {r.ino}: parent {inode.parent}, expected {r.parent}")
    if r.size >= 0 and inode.size != r.size:
        raise StateError(f"inode {r.ino}: size {inode.size}, expected {r.size}")
    if r.empty and changes.has_entries(view, r.ino):
        raise StateError(f"directory {r.ino} is not empty", ENOTEMPTY)
    if r.has_okey and inode.okey != r.okey:
        raise StateError(f"inode {r.ino}: object key {inode.okey!r}, expected {r.okey!r}")
    if (r.etag or r.has_etag) and (inode.etag, inode.obase) != (r.etag, r.obase):
        raise StateError(f"inode {r.ino}: object {inode.etag!r} of {inode.obase} bytes, "
                         f"expected {r.etag!r} of {r.obase}")


def _multi(r: Multi, view: View, changes: Changes) -> None:
    for sub in r.records:
        _apply_one(sub, view, changes)


_HANDLERS: dict[type, Callable[..., None]] = {
    CreateInode: _create_inode,
    LinkDirent: _link_dirent,
    UnlinkDirent: _unlink_dirent,
    AdjustLinks: _adjust_links,
    SetParent: _set_parent,
    SetAttr: _set_attr,
    WriteMeta: _write_meta,
    WriteInline: _write_inline,
    UnInline: _uninline,
    ChunkWrite: _chunk_write,
    ChunkTrim: _chunk_trim,
    ChunkDelete: _chunk_delete,
    ExpectInode: _expect_inode,
    SetOrigin: _set_origin,
    SetListed: _set_listed,
    MaterializeChunk: _materialize_chunk,
    ExpectChunk: _expect_chunk,
    SetName: _set_name,
    SetClean: _set_clean,
    Unpin: _unpin,
    KeyHold: keytable.key_hold_record,
    KeyClaim: keytable.key_claim,
    KeyLive: keytable.key_live,
    KeyRelease: keytable.key_release,
    KeyGone: keytable.key_gone,
    KeyUnclaim: keytable.key_unclaim,
    Multi: _multi,
}


def apply_sync(kv: KvStore, records: list[object], first_index: int, *, sync: bool) -> Changes:
    """Apply records with consecutive indexes in one atomic batch (worker thread)."""
    view = KvView(kv)
    changes = Changes()
    for i, record in enumerate(records):
        apply(record, view, changes, first_index + i)
    kv.write_sync(changes.batch(), sync=sync)
    return changes
