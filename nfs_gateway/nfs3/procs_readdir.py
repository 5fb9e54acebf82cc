"""NFS version 3 handlers: READDIR and READDIRPLUS (RFC 1813 §3.3.16, §3.3.17).

Rules:
- The client's byte budgets are kept exactly: READDIR's `count` bounds the whole READDIR3resok
  (XDR overhead included); READDIRPLUS's `maxcount` bounds the whole READDIRPLUS3resok and its
  `dircount` the entries' directory information alone (fileid, name, cookie — the RFC leaves
  attributes and handles out of it).
- The backend is asked for a bounded number of entries (what the budget could hold at best,
  capped by config); entries are kept in order until the next would overflow a budget. `eof`
  only if the backend reached the end and every entry it gave fitted. Not even one entry fits:
  TOOSMALL. A client continues from the last entry's cookie with the returned cookieverf.
- ".." at an export's root names the root itself, as LOOKUP does (procs_attr.py).
- Over UDP the budgets are cut to udp_xfer_max, as READ's count is: a reply must fit one
  datagram (the server cannot send a larger one), and fewer entries are always allowed.
"""

from __future__ import annotations

from dataclasses import replace

from nfs_gateway.backend import DirEntry, ReadDirResult, TooSmall, Wcc
from nfs_gateway.nfs3.codec_res import (
    MIN_ENTRY3_SIZE,
    entry3_size,
    entryplus3_size,
    readdir_fixed_size,
)
from nfs_gateway.nfs3.const import Stat
from nfs_gateway.nfs3.env import Env, Target
from nfs_gateway.nfs3.fhandle import FH_SIZE
from nfs_gateway.nfs3.types import (
    Entry3,
    EntryPlus3,
    ReaddirArgs,
    ReaddirplusArgs,
    ReaddirplusRes,
    ReaddirRes,
)
from nfs_gateway.program import CallContext

OK = Stat.OK
# The smallest entryplus3: a 1-byte name, attributes and a handle (what READDIRPLUS returns).
_MIN_ENTRYPLUS3_SIZE = entryplus3_size(1, True, FH_SIZE)


def _ask(budget: int, min_entry_size: int, cap: int) -> int:
    """How many entries to ask the backend for: all the budget could hold, at least one (so
    that TOOSMALL can be told from an empty directory), at most `cap`."""
    return min(cap, max(1, budget // min_entry_size))


def _budget(ctx: CallContext, env: Env, budget: int) -> int:
    """The client's byte budget, cut to what one datagram holds over UDP."""
    return min(budget, env.config.udp_xfer_max) if ctx.transport == "udp" else budget


def _too_small(fixed: int, budget: int, r: ReadDirResult) -> TooSmall:
    return TooSmall(f"budget {budget} holds no entry (fixed part {fixed})", Wcc(after=r.dir_attr))


async def _at_root(env: Env, t: Target, r: ReadDirResult) -> ReadDirResult:
    """The listing with ".." pointing at the directory itself when it is the export's root."""
    at = next((i for i, e in enumerate(r.entries) if e.name == b".."), None)
    if at is None or t.fid != await env.export_root(t.export):
        return r
    entries = list(r.entries)
    fileid = r.dir_attr.fileid if r.dir_attr is not None else t.fid.ino
    entries[at] = DirEntry(fileid, b"..", entries[at].cookie, t.fid, r.dir_attr)
    return replace(r, entries=entries)


async def readdir(env: Env, ctx: CallContext, args: ReaddirArgs) -> ReaddirRes:
    """READDIR (§3.3.16)."""
    t = env.resolve(ctx, args.dir)
    count = _budget(ctx, env, args.count)
    ask = _ask(count, MIN_ENTRY3_SIZE, env.config.readdir_max_entries)
    r = await env.backend.readdir(t.cred, t.fid, args.cookie, args.cookieverf, ask, False)
    r = await _at_root(env, t, r)
    fixed = readdir_fixed_size(r.dir_attr is not None)
    budget = count - fixed
    entries: list[Entry3] = []
    for e in r.entries:
        size = entry3_size(len(e.name))
        if size > budget:
            break
        budget -= size
        entries.append(Entry3(e.fileid, e.name, e.cookie))
    if budget < 0 or (r.entries and not entries):
        raise _too_small(fixed, count, r)
    eof = r.eof and len(entries) == len(r.entries)
    return ReaddirRes(OK, r.dir_attr, r.cookieverf, entries, eof)


def readdir_fail(status: Stat, wcc: Wcc) -> ReaddirRes:
    return ReaddirRes(status, wcc.after)


def _plus_entry(env: Env, t: Target, e: DirEntry) -> EntryPlus3:
    fh = env.handle(t.export, e.fid) if e.fid is not None else None
    return EntryPlus3(e.fileid, e.name, e.cookie, e.attr, fh)


async def readdirplus(env: Env, ctx: CallContext, args: ReaddirplusArgs) -> ReaddirplusRes:
    """READDIRPLUS (§3.3.17): entries with their attributes and handles."""
    t = env.resolve(ctx, args.dir)
    maxcount = _budget(ctx, env, args.maxcount)
    ask = min(
        _ask(args.dircount, MIN_ENTRY3_SIZE, env.config.readdirplus_max_entries),
        _ask(maxcount, _MIN_ENTRYPLUS3_SIZE, env.config.readdirplus_max_entries),
    )
    r = await env.backend.readdir(t.cred, t.fid, args.cookie, args.cookieverf, ask, True)
    r = await _at_root(env, t, r)
    fixed = readdir_fixed_size(r.dir_attr is not None)
    dir_budget, max_budget = args.dircount, maxcount - fixed
    entries: list[EntryPlus3] = []
    for e in r.entries:
        pe = _plus_entry(env, t, e)
        dir_size = entry3_size(len(e.name))
        size = entryplus3_size(len(e.name), pe.attr is not None, None if pe.fh is None else FH_SIZE)
        if dir_size > dir_budget or size > max_budget:
            break
        dir_budget -= dir_size
        max_budget -= size
        entries.append(pe)
    if max_budget < 0 or (r.entries and not entries):
        raise _too_small(fixed, maxcount, r)
    eof = r.eof and len(entries) == len(r.entries)
    return ReaddirplusRes(OK, r.dir_attr, r.cookieverf, entries, eof)


def readdirplus_fail(status: Stat, wcc: Wcc) -> ReaddirplusRes:
    return ReaddirplusRes(status, wcc.after)
