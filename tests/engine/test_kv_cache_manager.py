from tachyon.engine.kv_cache_manager import KVCacheManager
from tests.engine.helpers import make_request


def _computed(kv: KVCacheManager, req, num_tokens: int) -> None:
    """Pretend a step computed `num_tokens` more tokens of `req`."""
    req.num_computed_tokens += num_tokens
    kv.cache_full_blocks(req)


def test_allocation_takes_lowest_free_blocks_and_free_returns_all():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    req = make_request("a", list(range(10)))
    assert kv.allocate_slots(req, 10)
    assert req.block_ids == [0, 1, 2]
    assert kv.num_free_blocks == 5
    assert [kv.blocks[i].ref_count for i in req.block_ids] == [1, 1, 1]
    kv.free(req)
    assert kv.num_free_blocks == 8 and req.block_ids == []


def test_allocation_refuses_without_changing_anything():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    req = make_request("a", list(range(12)))
    assert not kv.allocate_slots(req, 12)
    assert req.block_ids == [] and kv.num_free_blocks == 2


def test_prefix_hit_shares_full_blocks_but_recomputes_last_token():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(12)))  # exactly 3 full blocks
    kv.allocate_slots(a, 12)
    _computed(kv, a, 12)
    b = make_request("b", list(range(12)))
    hits = kv.find_cached_prefix(b)
    assert [blk.block_id for blk in hits] == [0, 1]  # the block holding the last token is recomputed
    assert kv.allocate_slots(b, 4, hits)
    assert b.block_ids == [0, 1, 3]
    assert [kv.blocks[i].ref_count for i in (0, 1, 2, 3)] == [2, 2, 1, 1]


def test_different_salt_or_tokens_miss():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(9)))
    kv.allocate_slots(a, 9)
    _computed(kv, a, 9)
    salted = make_request("s", list(range(9)))
    salted.cache_salt = "tenant-2"
    assert kv.find_cached_prefix(salted) == []
    diverged = make_request("d", [0, 1, 2, 3, 99, 5, 6, 7, 8])
    assert [b.block_id for b in kv.find_cached_prefix(diverged)] == [0]


def test_freed_blocks_stay_cached_and_evict_lru_suffix_first():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = make_request("a", list(range(13)))
    kv.allocate_slots(a, 13)
    _computed(kv, a, 13)
    kv.free(a)
    # free queue: untouched block 3 was never used; a's blocks were returned tail first
    assert list(kv.free_queue) == [3, 2, 1, 0]
    b = make_request("b", list(range(13)))
    hits = kv.find_cached_prefix(b)
    assert [blk.block_id for blk in hits] == [0, 1, 2]
    # a newcomer with other tokens evicts from the head: block 3 first, then a's last block
    c = make_request("c", [50 + i for i in range(8)])
    assert kv.allocate_slots(c, 8)
    assert c.block_ids == [3, 2]
    assert [blk.block_id for blk in kv.find_cached_prefix(b)] == [0, 1]


def test_hit_on_free_cached_block_counts_against_free_space():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = make_request("a", list(range(9)))
    kv.allocate_slots(a, 9)
    _computed(kv, a, 9)
    kv.free(a)
    b = make_request("b", list(range(9)))
    hits = kv.find_cached_prefix(b)
    assert [blk.block_id for blk in hits] == [0, 1]
    assert kv.can_fit(b, 1, hits)  # 2 reused + 1 new = all 3 blocks
    assert kv.allocate_slots(b, 1, hits)
    assert kv.num_free_blocks == 0 and sorted(b.block_ids) == [0, 1, 2]


def test_prefix_caching_off_never_hits():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_request("a", list(range(12)))
    kv.allocate_slots(a, 12)
    _computed(kv, a, 12)
    assert kv.find_cached_prefix(make_request("b", list(range(12)))) == []
    assert kv.cached == {}
