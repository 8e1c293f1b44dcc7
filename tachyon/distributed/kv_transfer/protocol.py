"""The KV transfer wire protocol, shared by the export server and the connectors.

One TCP connection per fetch. The decode side sends one JSON line:
    {"op": "fetch", "transfer_id", "block_hashes": [...], "layout", "transport": "tcp" | "shm", "release": bool}
The prefill side answers one JSON line:
    {"ok": true, "found": [hash, ...], "checksums": [crc32, ...], "block_nbytes", "shm_name"?}
or {"ok": false, "error": "..."}; then, over TCP, the found blocks' bytes in that order, one chunk per block
(each checked against its CRC-32 on arrival); over shared memory the client copies them out of the named
segment and answers {"op": "done"}, after which the server unlinks it.
"""

from __future__ import annotations

import json
import socket
import zlib

MAX_HEADER_BYTES = 64 << 20  # a header lists hashes and checksums only


class KVTransferError(RuntimeError):
    """A fetch failed: peer gone or stalled, layout mismatch, checksum mismatch, or transfer unknown."""


def send_json(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def recv_json(reader) -> dict:
    """One JSON line from a socket's binary file reader."""
    line = reader.readline(MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise KVTransferError("connection closed (or line too long) before a full message arrived")
    return json.loads(line)


def checksum(data: memoryview | bytes) -> int:
    return zlib.crc32(data)


def recv_exact(reader, buffer: memoryview) -> None:
    got = 0
    while got < len(buffer):
        n = reader.readinto(buffer[got:])
        if not n:
            raise KVTransferError(f"connection closed after {got} of {len(buffer)} bytes of a block")
        got += n
