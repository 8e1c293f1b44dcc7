"""A server's part in disaggregated prefill/decode (`--role prefill | decode`).

Prefill role: requests that carry {"do_remote_decode": true} park their prompt's KV when they finish; the
response's `kv_transfer_params` say where (this host's KV export server) and under which transfer id.
Decode role: a request that carries {"do_remote_prefill": true, ...} first fetches the prompt blocks its
prefix cache lacks from that address (off the event loop and the engine thread, so streams keep flowing),
imports them, then runs as usual: the engine sees a prefix-cache hit and computes only the prompt's tail.
A failed fetch is logged and counted, and the request computes its whole prompt here instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tachyon.distributed.kv_transfer.connectors import CONNECTORS, KVConnector
from tachyon.distributed.kv_transfer.export_server import KVExportServer
from tachyon.distributed.kv_transfer.protocol import KVTransferError
from tachyon.engine.async_engine import AsyncLLMEngine

logger = logging.getLogger(__name__)

ROLES = ("colocated", "prefill", "decode")


class KVTransferStats:
    """Decode side: what fetching cost (read by /metrics)."""

    def __init__(self) -> None:
        self.fetches = self.failures = self.blocks = self.bytes = 0
        self.seconds = 0.0


class ServerKVTransfer:
    def __init__(
        self,
        role: str,
        engine: AsyncLLMEngine,
        bind: tuple[str, int],
        kv_host: str,
        connector: str,
        timeout_s: float,
    ) -> None:
        """`bind`: where the prefill role's KV export server listens; `kv_host`: the name decode instances
        reach it by (the two differ behind 0.0.0.0 or in Kubernetes)."""
        if role not in ROLES:
            raise ValueError(f"--role must be one of {ROLES}, got {role!r}")
        if role != "colocated" and engine.engine.config.tensor_parallel_size > 1:
            raise ValueError("--role prefill/decode does not run with --tensor-parallel-size > 1 yet")
        self.role, self.engine = role, engine
        self.stats = KVTransferStats()
        layout = engine.engine.kv_layout
        self.export: KVExportServer | None = None
        if role == "prefill":
            inner = engine.engine
            self.export = KVExportServer(inner.parking, inner.runner.read_kv_blocks, layout, *bind, timeout_s)
            self.address = f"{kv_host}:{self.export.port}"
            self.export.start()
        self.connector: KVConnector = CONNECTORS[connector](layout, timeout_s, engine.engine.runner.device)
        logger.info("Serving role: %s%s", role, f" (KV export at {self.address})" if self.export else "")

    def exports(self, params: dict[str, Any] | None) -> bool:
        return self.role == "prefill" and bool(params and params.get("do_remote_decode"))

    def response_params(self, request_id: str) -> dict[str, Any]:
        return {"remote_kv": self.address, "transfer_id": request_id}

    async def fetch_prompt_kv(self, params: dict[str, Any] | None, prompts: list[list[int]]) -> None:
        """Decode role: bring in what the prompts' prefill computed elsewhere (see the module docstring)."""
        if self.role != "decode" or not (params and params.get("do_remote_prefill")):
            return
        address, transfer_id = params.get("remote_kv"), params.get("transfer_id")
        if not isinstance(address, str) or not isinstance(transfer_id, str):
            logger.warning("kv_transfer_params without remote_kv and transfer_id; computing the prompt here")
            return
        inner = self.engine.engine
        wanted = list(dict.fromkeys(h for p in prompts for h in inner.prompt_block_hashes(p)))
        missing = inner.kv.missing_blocks(wanted)  # a racy read of the cache is harmless: at worst we refetch
        self.stats.fetches += 1
        try:
            result = await asyncio.to_thread(self.connector.fetch, address, transfer_id, missing)
        except KVTransferError as e:
            self.stats.failures += 1
            logger.warning("KV fetch for %s failed, computing the prompt here: %s", transfer_id, e)
            return
        self.stats.blocks += len(result.blocks)
        self.stats.bytes += result.num_bytes
        self.stats.seconds += result.seconds
        if result.blocks:
            self.engine.import_kv(result.blocks)
        logger.debug(
            "fetched %d/%d blocks (%d cached here) for %s in %.3fs",
            len(result.blocks),
            len(missing),
            len(wanted) - len(missing),
            transfer_id,
            result.seconds,
        )

    def close(self) -> None:
        if self.export:
            self.export.stop()
