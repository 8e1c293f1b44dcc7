"""The prefill side of KV transfer: a TCP server (one thread per connection) that hands parked blocks to
decode instances, over the socket, through a shared-memory segment on the same host, or by a
torch.distributed send (device to device on GPUs)."""

from __future__ import annotations

import logging
import socketserver
import threading
import uuid
from collections.abc import Callable
from multiprocessing import shared_memory

import torch
import torch.distributed as dist

from tachyon.distributed.kv_transfer.parking import KVParking
from tachyon.distributed.kv_transfer.protocol import (
    KVTransferError,
    block_checksums,
    pair_group,
    recv_json,
    send_json,
)

logger = logging.getLogger(__name__)


class KVExportServer:
    def __init__(
        self,
        parking: KVParking,
        read_blocks: Callable[[list[int]], torch.Tensor],
        layout: str,
        host: str,
        port: int,
        timeout_s: float = 60.0,
    ) -> None:
        """`read_blocks(block ids) -> uint8 [n, bytes per block]` reads the KV pool; `layout` names its shape
        and dtypes, which a decode instance's must equal."""
        self.parking, self.read_blocks, self.layout = parking, read_blocks, layout
        self.host, self.timeout_s = host, timeout_s
        self._store: dist.TCPStore | None = None  # torch transport: where pair groups rendezvous
        self._pairs: dict[str, object] = {}  # pair id -> its process group
        self._pair_locks: dict[str, threading.Lock] = {}
        self._pairs_lock = threading.Lock()
        self._server = socketserver.ThreadingTCPServer((host, port), self._handler_class(), bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.allow_reuse_address = True
        self._server.server_bind()
        self._server.server_activate()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="tachyon-kv-export", daemon=True)

    def start(self) -> None:
        self._thread.start()
        logger.info("KV export server listening on port %d", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self):
        export = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    export._serve(self.connection, self.rfile)
                except (OSError, KVTransferError, ValueError) as e:
                    logger.warning("KV export to %s failed: %s", self.client_address, e)

        return Handler

    def _serve(self, sock, reader) -> None:
        request = recv_json(reader)
        if request.get("op") != "fetch":
            send_json(sock, {"ok": False, "error": f"unknown op {request.get('op')!r}"})
            return
        if request.get("layout") != self.layout:
            send_json(sock, {"ok": False, "error": f"KV layouts differ: {request.get('layout')} vs {self.layout}"})
            return
        transfer_id, transport = request["transfer_id"], request.get("transport", "tcp")
        blocks = self.parking.check_out(transfer_id, [int(h) for h in request["block_hashes"]])
        if blocks is None:
            send_json(sock, {"ok": False, "error": f"no KV parked under {transfer_id!r} (expired or fetched)"})
            return
        try:
            data = self.read_blocks(list(blocks.values()))
        except BaseException:
            self.parking.check_in(transfer_id, release=False)
            raise
        # `data` is a copy: the blocks may go now (if the send fails, the decode side computes the prompt)
        self.parking.check_in(transfer_id, release=bool(request.get("release")))
        if transport != "torch":
            data = data.cpu()
        header = {"ok": True, "found": list(blocks), "block_nbytes": data.shape[1]}
        header["checksums"] = block_checksums(data, transport)
        if transport == "shm" and blocks:
            self._send_shared(sock, reader, header, data)
        elif transport == "torch":
            self._send_torch(sock, header, data, request["pair"])
        else:
            send_json(sock, header)
            for row in data:  # one chunk per block
                sock.sendall(memoryview(row.numpy()))

    @staticmethod
    def _send_shared(sock, reader, header: dict, data: torch.Tensor) -> None:
        segment = shared_memory.SharedMemory(name=f"tachyon-kv-{uuid.uuid4().hex}", create=True, size=data.numel())
        try:
            torch.frombuffer(segment.buf, dtype=torch.uint8, count=data.numel()).copy_(data.flatten())
            send_json(sock, {**header, "shm_name": segment.name})
            done = recv_json(reader)
            if done.get("op") != "done":
                raise KVTransferError(f"expected done, got {done}")
        finally:
            segment.close()
            segment.unlink()

    def _send_torch(self, sock, header: dict, data: torch.Tensor, pair_id: str) -> None:
        """One send on the pair's group; the first fetch of a pair forms the group through our TCPStore."""
        with self._pairs_lock:
            if self._store is None:
                self._store = dist.TCPStore(self.host, 0, is_master=True, wait_for_workers=False)
            lock = self._pair_locks.setdefault(pair_id, threading.Lock())
        with lock:  # one transfer at a time per pair: NCCL matches sends to receives by order alone
            send_json(sock, {**header, "store_port": self._store.port})
            group = self._pairs.get(pair_id)
            if group is None:
                local_ip = sock.getsockname()[0]
                group = pair_group(self._store, pair_id, 0, data.device, local_ip, self.timeout_s)
                self._pairs[pair_id] = group
            if data.numel():
                group.send([data], 1, 0).wait()
