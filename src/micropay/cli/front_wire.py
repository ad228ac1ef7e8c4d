"""The frames between ``micropay serve`` and its front processes (``micropay.cli.front``).

One Unix stream socket per front process carries frames both ways. A frame is a header
``<IBI>`` (the payload's length, the frame's kind, the front's connection number) and its
payload:

front to server
    ``LANE``: a request for a direct lane, read whole: ``<BBHHI>`` (the lane's number, whether
    the connection is kept after the answer, the lengths of the Content-Type and Authorization
    values, the length of the head), the two values, then the request as it arrived (head and
    body).
    ``RELAY``: any other request read whole and plainly (see ``micropay.cli.front``), for the
    server's own HTTP protocol to answer.
    ``HAND_OVER``: the connection itself (its descriptor rides with the frame's bytes as
    ``SCM_RIGHTS``), and the bytes already read from it that no answer has consumed.

server to front
    ``ANSWER``: ``<B>`` (whether to close after it) and the whole response, to write as is.
    ``STOP``: stop accepting, answer what is in flight, close every connection, exit.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<IBI")
LANE_FIELDS = struct.Struct("<BBHHI")
ANSWER_FIELDS = struct.Struct("<B")

LANE, RELAY, HAND_OVER = 1, 2, 3
ANSWER, STOP = 11, 12

FRAME_BYTES_MAX = 1 << 26
"""Largest payload either side accepts: requests are bounded by the front's head and body
limits (5 MiB by default), answers by the API's page and batch limits (a few MiB)."""
READ_BYTES = 1 << 18
"""Bytes asked of the link per read."""
CONNECTION_NUMBER_MAX = (1 << 32) - 1


def frame(kind: int, connection: int, payload: bytes) -> bytes:
    """One frame, ready to send."""
    return HEADER.pack(len(payload), kind, connection) + payload


class WireError(Exception):
    """The other side sent a frame this side cannot read: the link is closed."""


def frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """The whole frames at the start of ``buffer`` as (kind, connection, payload), removed from
    it; a partial frame stays for the next read."""
    found: list[tuple[int, int, bytes]] = []
    offset = 0
    size = len(buffer)
    header_size = HEADER.size
    unpack = HEADER.unpack_from
    while size - offset >= header_size:
        length, kind, connection = unpack(buffer, offset)
        if length > FRAME_BYTES_MAX:
            raise WireError(f"frame of {length} bytes")
        end = offset + header_size + length
        if end > size:
            break
        found.append((kind, connection, bytes(buffer[offset + header_size : end])))
        offset = end
    if offset:
        del buffer[:offset]
    return found
