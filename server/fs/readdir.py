"""READDIR / READDIRPLUS (RFC 1813 §3.3.16, §3.3.17) over the cookie index.

Rules:
- Cookie 1 is `.`, cookie 2 is `..`; entries carry the cookie their directory gave them when they
  were linked (monotonic, never reused), so a cookie stays a valid resume point even after its
  entry is removed. Resuming is one LevelDB range scan from (dir, cookie + 1): O(page).
- The cookie verifier is the directory's generation (common.dir_cookieverf). An all-zero verifier
  is accepted with any cookie, as clients send zeros after dropping their cache.
- A cookie the directory never handed out is BAD_COOKIE.
"""

from __future__ import annotations

from nfs_gateway.backend import BadCookie, DirEntry, FileId, ReadDirResult
from server.fs import keys
from server.fs.changes import FIRST_COOKIE
from server.fs.common import DOT, DOTDOT, dir_cookieverf, to_attr
from server.fs.meta import MetaStore, decode_value
from server.fs.records import CookieEntry, Inode
from storage.kv import prefix_end

DOT_COOKIE, DOTDOT_COOKIE = 1, 2
_ZERO_VERF = bytes(8)


def check_cookie(d: Inode, cookie: int, cookieverf: bytes) -> None:
    if cookie == 0:
        return
    if cookieverf not in (_ZERO_VERF, dir_cookieverf(d)):
        raise BadCookie(f"cookie verifier {cookieverf.hex()} is not this directory's")
    if cookie >= max(d.next_cookie, FIRST_COOKIE):
        raise BadCookie(f"cookie {cookie} was never handed out by directory {d.ino}")


async def read_dir_page(
    meta: MetaStore,
    d: Inode,
    parent: Inode | None,
    cookie: int,
    cookieverf: bytes,
    max_entries: int,
    plus: bool,
    fsid: int,
) -> ReadDirResult:
    check_cookie(d, cookie, cookieverf)
    entries: list[DirEntry] = []
    if cookie < DOT_COOKIE:
        entries.append(_entry(DOT, DOT_COOKIE, d, plus, fsid))
    if cookie < DOTDOT_COOKIE and len(entries) < max_entries:
        entries.append(_entry(DOTDOT, DOTDOT_COOKIE, parent or d, plus, fsid, d.parent))
    want = max_entries - len(entries)
    # One more than fits tells whether this page reaches the end.
    start = keys.cookie_key(d.ino, max(cookie + 1, FIRST_COOKIE))
    stop = prefix_end(keys.cookie_prefix(d.ino))
    rows = await meta.scan(start, stop, want + 1)
    eof = len(rows) <= want
    rows = rows[:want]
    found: list[tuple[int, CookieEntry]] = [
        (keys.parse_cookie_key(k)[1], decode_value(v)) for k, v in rows
    ]
    inodes = await meta.inodes([e.ino for _, e in found]) if plus else [None] * len(found)
    for (c, e), inode in zip(found, inodes, strict=True):
        if plus and inode is not None:
            entries.append(
                DirEntry(e.ino, e.name, c, FileId(e.ino, inode.gen), to_attr(inode, fsid))
            )
        else:
            entries.append(DirEntry(e.ino, e.name, c))
    return ReadDirResult(to_attr(d, fsid), dir_cookieverf(d), tuple(entries), eof)


def _entry(
    name: bytes, cookie: int, inode: Inode, plus: bool, fsid: int, fileid: int | None = None
) -> DirEntry:
    ino = inode.ino if fileid is None else fileid
    if not plus:
        return DirEntry(ino, name, cookie)
    return DirEntry(inode.ino, name, cookie, FileId(inode.ino, inode.gen), to_attr(inode, fsid))
