"""The decode side of KV transfer: fetch the blocks of a prompt that this instance's prefix cache lacks
from the prefill instance that computed them. Both connectors speak the protocol in `protocol.py`; they
differ in how the bytes travel: through the TCP socket (any two hosts), a shared-memory segment (one host,
one copy, no socket throughput limit), or a torch.distributed send on a group of the two instances (NCCL
between GPUs: device to device, no host copy; gloo between CPU instances)."""

from __future__ import annotations

import datetime
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import torch
import torch.distributed as dist

from tachyon.distributed.kv_transfer.protocol import (
    KVTransferError,
    block_checksums,
    pair_group,
    recv_exact,
    recv_json,
    send_json,
)

CPU = torch.device("cpu")


@dataclass
class FetchResult:
    blocks: dict[int, torch.Tensor]  # block hash -> uint8 [bytes per block]
    num_bytes: int
    seconds: float


class KVConnector(ABC):
    transport: str

    def __init__(self, layout: str, timeout_s: float, device: torch.device = CPU) -> None:
        """`device`: where this instance's KV pool lives (the torch transport receives straight into it)."""
        self.layout, self.timeout_s, self.device = layout, timeout_s, device

    def _request(self, transfer_id: str, block_hashes: list[int], release: bool) -> dict:
        return {
            "op": "fetch",
            "transfer_id": transfer_id,
            "block_hashes": block_hashes,
            "layout": self.layout,
            "transport": self.transport,
            "release": release,
        }

    def fetch(self, address: str, transfer_id: str, block_hashes: list[int], release: bool = True) -> FetchResult:
        """Fetch the blocks with these hashes that `address` (host:port) holds under `transfer_id`; `release`
        lets it free them afterwards. Raises KVTransferError on any failure, within about timeout_s."""
        start = time.monotonic()
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=self.timeout_s) as sock:
                sock.settimeout(self.timeout_s)  # per operation: a stalled peer fails the fetch
                reader = sock.makefile("rb")
                send_json(sock, self._request(transfer_id, block_hashes, release))
                header = recv_json(reader)
                if not header.get("ok"):
                    raise KVTransferError(f"{address}: {header.get('error')}")
                data = self._receive(sock, reader, header, host)
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a torch.distributed failure
            if isinstance(e, KVTransferError):
                raise
            raise KVTransferError(f"KV fetch from {address} failed: {e}") from e
        for block_hash, got, sent in zip(header["found"], block_checksums(data, self.transport), header["checksums"]):
            if got != sent:
                raise KVTransferError(f"KV block {block_hash:x} from {address} failed its checksum")
        return FetchResult(dict(zip(header["found"], data, strict=True)), data.numel(), time.monotonic() - start)

    @abstractmethod
    def _receive(self, sock, reader, header: dict, host: str) -> torch.Tensor:
        """The found blocks, uint8 [len(found), block_nbytes]."""

    @staticmethod
    def _empty(header: dict, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.empty(len(header["found"]), header["block_nbytes"], dtype=torch.uint8, device=device)


class TcpConnector(KVConnector):
    transport = "tcp"

    def _receive(self, sock, reader, header: dict, host: str) -> torch.Tensor:
        data = self._empty(header)
        for row in data:
            recv_exact(reader, memoryview(row.numpy()))
        return data


class SharedMemoryConnector(KVConnector):
    transport = "shm"

    def _receive(self, sock, reader, header: dict, host: str) -> torch.Tensor:
        if not header["found"]:
            return self._empty(header)
        segment = shared_memory.SharedMemory(name=header["shm_name"])
        resource_tracker.unregister(segment._name, "shared_memory")  # the server owns (and unlinks) it
        try:
            shape = (len(header["found"]), header["block_nbytes"])
            data = torch.frombuffer(segment.buf, dtype=torch.uint8, count=shape[0] * shape[1]).view(shape).clone()
        finally:
            segment.close()
        send_json(sock, {"op": "done"})
        return data


class TorchDistributedConnector(KVConnector):
    transport = "torch"

    def __init__(self, layout: str, timeout_s: float, device: torch.device = CPU) -> None:
        super().__init__(layout, timeout_s, device)
        self.pair_id = uuid.uuid4().hex  # this instance's side of every pair it forms
        self._groups: dict[str, object] = {}  # prefill host:store port -> the pair's process group
        self._lock = threading.Lock()  # one transfer at a time: the prefill side sends in order

    def _request(self, transfer_id: str, block_hashes: list[int], release: bool) -> dict:
        return {**super()._request(transfer_id, block_hashes, release), "pair": self.pair_id}

    def fetch(self, address: str, transfer_id: str, block_hashes: list[int], release: bool = True) -> FetchResult:
        with self._lock:
            return super().fetch(address, transfer_id, block_hashes, release)

    def _receive(self, sock, reader, header: dict, host: str) -> torch.Tensor:
        key = f"{host}:{header['store_port']}"
        group = self._groups.get(key)
        if group is None:
            store = dist.TCPStore(
                host, header["store_port"], is_master=False, timeout=datetime.timedelta(seconds=self.timeout_s)
            )
            local_ip = sock.getsockname()[0]
            group = pair_group(store, self.pair_id, 1, self.device, local_ip, self.timeout_s)
            self._groups[key] = group
        data = self._empty(header, self.device)
        if data.numel():
            group.recv([data], 0, 0).wait()
        return data


CONNECTORS: dict[str, type[KVConnector]] = {
    "tcp": TcpConnector,
    "shm": SharedMemoryConnector,
    "torch": TorchDistributedConnector,
}
