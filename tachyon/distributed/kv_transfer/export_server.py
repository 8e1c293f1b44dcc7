"""The prefill side of KV transfer: a TCP server (one thread per connection) that hands parked blocks to
decode instances, over the socket or through a shared-memory segment on the same host."""

from __future__ import annotations

import logging
import socketserver
import threading
import uuid
from collections.abc import Callable
from multiprocessing import shared_memory

import torch

from tachyon.distributed.kv_transfer.parking import KVParking
from tachyon.distributed.kv_transfer.protocol import KVTransferError, checksum, recv_json, send_json

logger = logging.getLogger(__name__)


class KVExportServer:
    def __init__(
        self,
        parking: KVParking,
        read_blocks: Callable[[list[int]], torch.Tensor],
        layout: str,
        host: str,
        port: int,
    ) -> None:
        """`read_blocks(block ids) -> uint8 [n, bytes per block]` reads the KV pool; `layout` names its shape
        and dtypes, which a decode instance's must equal."""
        self.parking, self.read_blocks, self.layout = parking, read_blocks, layout
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
        transfer_id = request["transfer_id"]
        blocks = self.parking.check_out(transfer_id, [int(h) for h in request["block_hashes"]])
        if blocks is None:
            send_json(sock, {"ok": False, "error": f"no KV parked under {transfer_id!r} (expired or fetched)"})
            return
        release = False
        try:
            data = self.read_blocks(list(blocks.values())) if blocks else torch.empty(0, 0, dtype=torch.uint8)
            rows = [memoryview(row.numpy()) for row in data]
            header = {"ok": True, "found": list(blocks), "checksums": [checksum(r) for r in rows]}
            header["block_nbytes"] = data.shape[1] if blocks else 0
            if request.get("transport") == "shm" and blocks:
                self._send_shared(sock, reader, header, data)
            else:
                send_json(sock, header)
                for row in rows:  # one chunk per block
                    sock.sendall(row)
            release = bool(request.get("release"))
        finally:
            self.parking.check_in(transfer_id, release)

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
