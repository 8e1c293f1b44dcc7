"""The KV transfer wire protocol, shared by the export server and the connectors.

One TCP connection per fetch. The decode side sends one JSON line:
    {"op": "fetch", "transfer_id", "block_hashes": [...], "layout", "transport", "release": bool, "pair"?}
The prefill side answers one JSON line:
    {"ok": true, "found": [hash, ...], "checksums": [...], "block_nbytes", "shm_name"? "store_port"?}
or {"ok": false, "error": "..."}; then the found blocks travel, in that order, by the transport:
- tcp: over this socket, one chunk per block, each checked against its CRC-32 on arrival;
- shm: through the named shared-memory segment; the client copies them out and answers {"op": "done"},
  after which the server unlinks it;
- torch: one torch.distributed send/recv on a two-rank group (`pair`: the decode side's id for it; gloo
  between CPU instances, NCCL between GPUs, so KV goes device to device), formed once per pair through a
  TCPStore the prefill side hosts at `store_port`. Checksums are sums of each block's int32 words,
  computed where the blocks are, so checking them never copies device memory to the host.
"""

from __future__ import annotations

import datetime
import json
import socket
import zlib

import torch
import torch.distributed as dist

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


def block_checksums(data: torch.Tensor, transport: str) -> list[int]:
    """One checksum per block of uint8 [n, bytes per block]: CRC-32 of host bytes, or (torch transport)
    the int64 sum of the block's int32 words on its own device."""
    if transport == "torch":
        return data.view(torch.int32).sum(dim=1, dtype=torch.int64).tolist()
    return [zlib.crc32(memoryview(row.numpy())) for row in data]


def recv_exact(reader, buffer: memoryview) -> None:
    got = 0
    while got < len(buffer):
        n = reader.readinto(buffer[got:])
        if not n:
            raise KVTransferError(f"connection closed after {got} of {len(buffer)} bytes of a block")
        got += n


def pair_group(store: dist.Store, pair_id: str, rank: int, device: torch.device, local_ip: str, timeout_s: float):
    """The two-rank group (prefill rank 0, decode rank 1) of the torch transport; blocks until both joined.
    `local_ip`: this side's address on the control connection, so that gloo uses the interface that
    reaches the peer, not whatever the host name resolves to (NCCL picks its own: NCCL_SOCKET_IFNAME)."""
    prefixed = dist.PrefixStore(f"tachyon-kv/{pair_id}", store)
    if device.type == "cuda":
        nccl = getattr(dist, "ProcessGroupNCCL", None)
        if nccl is None:
            raise KVTransferError("this torch has no NCCL: use --kv-connector tcp")
        return nccl(prefixed, rank, 2)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = datetime.timedelta(seconds=timeout_s)
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_ip)]
    return dist.ProcessGroupGloo(prefixed, rank, 2, options)
