"""The decode side of KV transfer: fetch the blocks of a prompt that this instance's prefix cache lacks
from the prefill instance that computed them. Both connectors speak the protocol in `protocol.py`; they
differ in how the bytes travel: through the TCP socket (any two hosts) or a shared-memory segment (one host,
one copy, no socket throughput limit). (On GPUs an NCCL connector through torch.distributed would slot in
behind the same interface.)"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import torch

from tachyon.distributed.kv_transfer.protocol import KVTransferError, checksum, recv_exact, recv_json, send_json


@dataclass
class FetchResult:
    blocks: dict[int, torch.Tensor]  # block hash -> uint8 [bytes per block]
    num_bytes: int
    seconds: float


class KVConnector(ABC):
    transport: str

    def __init__(self, layout: str, timeout_s: float) -> None:
        self.layout, self.timeout_s = layout, timeout_s

    def fetch(self, address: str, transfer_id: str, block_hashes: list[int], release: bool = True) -> FetchResult:
        """Fetch the blocks with these hashes that `address` (host:port) holds under `transfer_id`; `release`
        lets it free them afterwards. Raises KVTransferError on any failure, within about timeout_s."""
        start = time.monotonic()
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=self.timeout_s) as sock:
                sock.settimeout(self.timeout_s)  # per operation: a stalled peer fails the fetch
                reader = sock.makefile("rb")
                request = {"op": "fetch", "transfer_id": transfer_id, "block_hashes": block_hashes}
                send_json(sock, {**request, "layout": self.layout, "transport": self.transport, "release": release})
                header = recv_json(reader)
                if not header.get("ok"):
                    raise KVTransferError(f"{address}: {header.get('error')}")
                blocks = self._receive(sock, reader, header)
        except (OSError, ValueError) as e:
            raise KVTransferError(f"KV fetch from {address} failed: {e}") from e
        for (block_hash, data), crc in zip(blocks.items(), header["checksums"], strict=True):
            if checksum(memoryview(data.numpy())) != crc:
                raise KVTransferError(f"KV block {block_hash:x} from {address} failed its checksum")
        return FetchResult(blocks, sum(b.numel() for b in blocks.values()), time.monotonic() - start)

    @abstractmethod
    def _receive(self, sock, reader, header: dict) -> dict[int, torch.Tensor]: ...


class TcpConnector(KVConnector):
    transport = "tcp"

    def _receive(self, sock, reader, header: dict) -> dict[int, torch.Tensor]:
        data = torch.empty(len(header["found"]), header["block_nbytes"], dtype=torch.uint8)
        for row in data:
            recv_exact(reader, memoryview(row.numpy()))
        return dict(zip(header["found"], data, strict=True))


class SharedMemoryConnector(KVConnector):
    transport = "shm"

    def _receive(self, sock, reader, header: dict) -> dict[int, torch.Tensor]:
        if not header["found"]:
            return {}
        segment = shared_memory.SharedMemory(name=header["shm_name"])
        resource_tracker.unregister(segment._name, "shared_memory")  # the server owns (and unlinks) it
        try:
            shape = (len(header["found"]), header["block_nbytes"])
            data = torch.frombuffer(segment.buf, dtype=torch.uint8, count=shape[0] * shape[1]).view(shape).clone()
        finally:
            segment.close()
        send_json(sock, {"op": "done"})
        return dict(zip(header["found"], data, strict=True))


CONNECTORS: dict[str, type[KVConnector]] = {"tcp": TcpConnector, "shm": SharedMemoryConnector}
