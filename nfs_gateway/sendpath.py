"""Writing a reply to a non-blocking socket without copying it.

A reply is a list of buffers: bytes-likes (the record mark, the RPC header, encoded results)
and FileSlices (READ data still in the page cache). Runs of plain buffers go out in one
scatter-gather `sendmsg` (at most IOV_MAX of them); a FileSlice goes out with os.sendfile, so
its bytes never pass through user space, with MSG_MORE on the run before it so TCP sends the
header together with the data. Every FileSlice is released once sent, or when its reply is
given up.
"""

from __future__ import annotations

import os
import socket as stdlib_socket

import trio

from nfs_gateway.backend import FileSlice

_IOV_MAX = 1024  # Linux UIO_MAXIOV


def send_some(sock: stdlib_socket.socket, buffers: list) -> list:
    """Send what the socket takes now of `buffers` (bytes-likes and FileSlices) without
    blocking; what is left (empty when all went). Slices are released once sent."""
    while buffers:
        first = buffers[0]
        if type(first) is FileSlice:
            buffers = _sendfile_some(sock, first, buffers)
            if buffers and buffers[0] is first:
                return buffers  # the socket is full
            continue
        end = _plain_run(buffers)
        run = buffers[:end]
        try:
            # MSG_MORE: a slice follows, so TCP holds the header back to send it with the data.
            sent = sock.sendmsg(run, [], stdlib_socket.MSG_MORE if end < len(buffers) else 0)
        except BlockingIOError:
            return buffers
        i = 0
        while sent:
            n = len(buffers[i])
            if sent < n:
                return [memoryview(buffers[i]).cast("B")[sent:], *buffers[i + 1 :]]
            sent -= n
            i += 1
        if i < end:
            return buffers[i:]  # the socket took the run only in part
        buffers = buffers[i:]
    return buffers


def _plain_run(buffers: list) -> int:
    """How many leading buffers are plain bytes-likes (at most _IOV_MAX)."""
    for i, b in enumerate(buffers):
        if type(b) is FileSlice or i == _IOV_MAX:
            return i
    return len(buffers)


def _sendfile_some(sock: stdlib_socket.socket, piece: FileSlice, buffers: list) -> list:
    try:
        n = os.sendfile(sock.fileno(), piece.fd, piece.offset, piece.count)
    except BlockingIOError:
        return buffers
    if n == 0:  # the file ended early (truncated meanwhile): the rest reads as zeros
        zeros = bytes(piece.count)
        piece.release()
        return [zeros, *buffers[1:]]
    piece.offset += n
    piece.count -= n
    if piece.count:
        return buffers
    piece.release()
    return buffers[1:]


def release_slices(buffers: list) -> None:
    """Release the FileSlices of a reply that will not be sent (in full)."""
    for b in buffers:
        if type(b) is FileSlice:
            b.release()


async def send_buffers(sock: stdlib_socket.socket, buffers: list) -> None:
    """Write all of `buffers` (no copy), waiting for the socket only when it is full. The
    FileSlices among them are released, also when sending fails."""
    buffers = [b for b in buffers if len(b)]
    try:
        buffers = send_some(sock, buffers)
        while buffers:
            await trio.lowlevel.wait_writable(sock)
            buffers = send_some(sock, buffers)
    finally:
        release_slices(buffers)
