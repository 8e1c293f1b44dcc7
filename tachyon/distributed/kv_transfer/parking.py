"""A prefill instance's finished prompts, held in its KV pool until a decode instance has fetched them.

When a request marked for export finishes, the engine parks its full prompt blocks under the request's
transfer id: each gets one more reference, so neither new requests nor eviction can touch it. The export
server (another thread) checks blocks out by hash while it reads them; the engine thread releases a
transfer once it was fetched with `release`, or once it has waited `ttl_s` (the decode side died or never
came), so a lost decode instance never leaks blocks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from tachyon.engine.kv_cache_manager import KVCacheManager
from tachyon.engine.request import Request


@dataclass
class _Parked:
    blocks: dict[int, int]  # block hash -> block id
    deadline: float
    readers: int = 0
    released: bool = False
    request_ids: list[str] = field(default_factory=list)


class KVParking:
    def __init__(self, kv: KVCacheManager, ttl_s: float) -> None:
        self.kv, self.ttl_s = kv, ttl_s
        self._parked: dict[str, _Parked] = {}
        self._lock = threading.Lock()

    @property
    def num_blocks(self) -> int:
        with self._lock:
            return sum(len(p.blocks) for p in self._parked.values())

    def park(self, transfer_id: str, req: Request) -> None:
        """Engine thread, as `req` finishes: hold its full blocks of computed prompt tokens."""
        self.kv.update_block_hashes(req)
        num_full = min(req.num_computed_tokens, req.num_prompt_tokens) // self.kv.block_size
        blocks = dict(zip(req.block_hashes[:num_full], req.block_ids[:num_full], strict=True))
        self.kv.hold(list(blocks.values()))
        with self._lock:
            parked = self._parked.setdefault(transfer_id, _Parked({}, time.monotonic() + self.ttl_s))
            duplicates = [b for h, b in blocks.items() if h in parked.blocks]  # n > 1: samples share a prompt
            parked.blocks.update(blocks)
            parked.request_ids.append(req.request_id)
        self.kv.release(duplicates)

    def check_out(self, transfer_id: str, hashes: list[int]) -> dict[int, int] | None:
        """Export thread: the parked blocks among `hashes` (hash -> block id), pinned until `check_in`;
        None if the transfer is unknown (never parked, already released or expired)."""
        with self._lock:
            parked = self._parked.get(transfer_id)
            if parked is None or parked.released:
                return None
            parked.readers += 1
            return {h: parked.blocks[h] for h in hashes if h in parked.blocks}

    def check_in(self, transfer_id: str, release: bool) -> None:
        with self._lock:
            parked = self._parked[transfer_id]
            parked.readers -= 1
            parked.released |= release

    def collect(self, now: float | None = None) -> int:
        """Engine thread: return the blocks of transfers fetched for good or waited out; how many blocks."""
        now = time.monotonic() if now is None else now
        with self._lock:
            done = [t for t, p in self._parked.items() if p.readers == 0 and (p.released or now >= p.deadline)]
            freed = [self._parked.pop(t) for t in done]
        for parked in freed:
            self.kv.release(list(parked.blocks.values()))
        return sum(len(p.blocks) for p in freed)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._parked)
