"""Paged KV-cache block accounting with automatic prefix caching. Called by the scheduler only.

Every request owns a list of block ids. A block that becomes full of computed tokens gets a
hash chained from its parent's (parent hash, token ids, salt) and is registered in the prefix
cache; a later request whose prompt starts with the same tokens reuses it (ref count + 1).
Freed blocks go to the tail of an LRU free queue but keep their hash, so they can still be hit
until they are evicted from the queue's head for new data:

    free queue:  head [evict first ... most recently freed] tail
    a request frees its blocks tail-first, so its prefix outlives its suffix.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from tachyon.engine.request import Request


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # prompt tokens found

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...], salt: str | None) -> int:
    """Stable across processes (no per-process string hash salt), so KV can move between instances."""
    digest = hashlib.blake2b(repr((parent_hash, token_ids, salt)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def extend_block_hashes(hashes: list[int], token_ids: list[int], block_size: int, salt: str | None) -> list[int]:
    """Extend the hash chain `hashes` over every full block of `token_ids`; returns `hashes`."""
    for i in range(len(hashes), len(token_ids) // block_size):
        parent = hashes[-1] if hashes else None
        hashes.append(hash_block(parent, tuple(token_ids[i * block_size : (i + 1) * block_size]), salt))
    return hashes


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[int, Block] = {}  # block hash -> block holding that content
        self.stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def update_block_hashes(self, req: Request) -> None:
        """Extend the request's hash chain over every full block of its tokens."""
        extend_block_hashes(req.block_hashes, req.all_token_ids, self.block_size, req.cache_salt)

    def find_cached_prefix(self, req: Request) -> list[Block]:
        """Leading blocks of `req` already in the cache. The last token is always recomputed, so
        that the step has a token whose logits it can sample from."""
        if not self.enable_prefix_caching or req.wants_prompt_logprobs:
            return []
        self.update_block_hashes(req)
        max_blocks = (req.num_tokens - 1) // self.block_size
        hits = []
        for block_hash in req.block_hashes[:max_blocks]:
            block = self.cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_lookup(self, num_queried: int, num_hit: int) -> None:
        self.stats.queries += num_queried
        self.stats.hits += num_hit

    def can_fit(self, req: Request, num_new_tokens: int, cached_prefix: list[Block] = ()) -> bool:
        need = self._num_new_blocks(req, num_new_tokens, cached_prefix)
        return need + sum(b.ref_count == 0 for b in cached_prefix) <= self.num_free_blocks

    def allocate_slots(self, req: Request, num_new_tokens: int, cached_prefix: list[Block] = ()) -> bool:
        """Give `req` blocks for `num_new_tokens` more tokens after its computed ones (and after a
        cached prefix it is about to adopt). False, changing nothing, if the pool cannot."""
        if not self.can_fit(req, num_new_tokens, cached_prefix):
            return False
        need = self._num_new_blocks(req, num_new_tokens, cached_prefix)
        for block in cached_prefix:
            if block.ref_count == 0:
                del self.free_queue[block.block_id]
            block.ref_count += 1
            req.block_ids.append(block.block_id)
        req.num_cached_blocks += len(cached_prefix)
        for _ in range(need):
            req.block_ids.append(self._pop_free_block().block_id)
        return True

    def _num_new_blocks(self, req: Request, num_new_tokens: int, cached_prefix) -> int:
        num_tokens = req.num_computed_tokens + len(cached_prefix) * self.block_size + num_new_tokens
        return max(0, -(-num_tokens // self.block_size) - len(req.block_ids) - len(cached_prefix))

    def _pop_free_block(self) -> Block:
        _, block = self.free_queue.popitem(last=False)
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) is block:
                del self.cached[block.block_hash]
            block.block_hash = None
        block.ref_count = 1
        return block

    def cache_full_blocks(self, req: Request) -> None:
        """Register the request's newly completed blocks (after the step that computed them)."""
        if not self.enable_prefix_caching:
            return
        # accepted draft tokens count as computed one step before the engine appends them
        num_full = min(min(req.num_computed_tokens, req.num_tokens) // self.block_size, len(req.block_ids))
        if num_full <= req.num_cached_blocks:
            return
        self.update_block_hashes(req)
        for i in range(req.num_cached_blocks, num_full):
            block, block_hash = self.blocks[req.block_ids[i]], req.block_hashes[i]
            if block.block_hash is None and block_hash not in self.cached:
                block.block_hash = block_hash
                self.cached[block_hash] = block
        req.num_cached_blocks = num_full

    def trim(self, req: Request, num_tokens: int) -> None:
        """Free the request's blocks past its first `num_tokens` positions: the slots of rejected draft
        tokens. They hold nothing cached, so they go to the head of the free queue, evicted first."""
        keep = -(-num_tokens // self.block_size)
        for block_id in reversed(req.block_ids[keep:]):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = block
                if block.block_hash is None:
                    self.free_queue.move_to_end(block_id, last=False)
        del req.block_ids[keep:]

    def free(self, req: Request) -> None:
        """Return the request's blocks; cached ones stay findable until evicted."""
        self.release(list(reversed(req.block_ids)))
        req.block_ids = []
        req.num_cached_blocks = 0

    def hold(self, block_ids: list[int]) -> None:
        """One more reference to blocks a request owns (KV parked for another instance to fetch)."""
        for block_id in block_ids:
            self.blocks[block_id].ref_count += 1

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference each; a block nobody holds joins the free queue's tail, in this order."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = block

    def import_blocks(self, block_hashes: list[int]) -> list[tuple[int, int]]:
        """Take free blocks for KV computed elsewhere: each hash not already cached gets a block, registered
        in the prefix cache and left free (evictable, most recently used), for the caller to fill before the
        next step. Returns (hash, block id) pairs, stopping early if the pool has no free block left."""
        taken = []
        for block_hash in block_hashes:
            if block_hash in self.cached:
                continue
            if not self.free_queue:
                break
            block = self._pop_free_block()
            block.block_hash = block_hash
            self.cached[block_hash] = block
            taken.append((block_hash, block.block_id))
        self.release([block_id for _, block_id in taken])
        return taken

    def missing_blocks(self, block_hashes: list[int]) -> list[int]:
        """The hashes the prefix cache does not hold (a decode instance fetches only those)."""
        return [h for h in block_hashes if h not in self.cached]
