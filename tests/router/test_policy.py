"""Policies and pools on hand-set loads: exact picks, ties in turn, prefix stickiness and its
imbalance bound, unhealthy instances only as a last resort."""

from __future__ import annotations

import pytest

from tachyon.router.instance import Instance
from tachyon.router.policy import LeastOutstanding, PrefixAware, prefix_key
from tachyon.router.pool import InstancePool


def _instances(*loads: int) -> list[Instance]:
    return [Instance(f"http://i{n}", "replica", num_in_flight=load) for n, load in enumerate(loads)]


def test_least_outstanding_picks_the_lowest_load_counting_the_queue():
    a, b, c = _instances(2, 1, 1)
    c.num_waiting = 3
    assert LeastOutstanding().choose([a, b, c], {}) is b


def test_least_outstanding_takes_ties_in_turn():
    instances = _instances(0, 0, 0)
    policy = LeastOutstanding()
    assert [policy.choose(instances, {}).url for _ in range(4)] == ["http://i1", "http://i2", "http://i0", "http://i1"]


def test_prefix_aware_sticks_until_the_imbalance_bound():
    a, b = _instances(0, 0)
    policy = PrefixAware(prefix_chars=10, imbalance=2)
    owner = policy.choose([a, b], {"prompt": "0123456789 first"})
    other = b if owner is a else a
    owner.num_in_flight = 2  # 2 more than the other: still within the bound
    assert policy.choose([a, b], {"prompt": "0123456789 second"}) is owner
    owner.num_in_flight = 3
    assert policy.choose([a, b], {"prompt": "0123456789 third"}) is other
    owner.num_in_flight = 0  # the new choice was remembered
    assert policy.choose([a, b], {"prompt": "0123456789 fourth"}) is other


def test_prefix_aware_leaves_an_owner_that_is_not_a_candidate():
    a, b = _instances(0, 0)
    policy = PrefixAware(prefix_chars=10, imbalance=4)
    owner = policy.choose([a, b], {"prompt": "same start"})
    other = b if owner is a else a
    assert policy.choose([other], {"prompt": "same start"}) is other
    assert policy.choose([a, b], {"prompt": "same start"}) is other


@pytest.mark.parametrize(("capacity", "remembered"), [(2, False), (3, True)])
def test_prefix_aware_forgets_the_least_recently_used_prefix(capacity, remembered):
    a, b = _instances(0, 0)
    policy = PrefixAware(prefix_chars=4, imbalance=100, capacity=capacity)
    owner = policy.choose([a, b], {"prompt": "AAAA"})
    for prompt in ("BBBB", "CCCC"):
        policy.choose([a, b], {"prompt": prompt})
    owner.num_in_flight = 1  # within the bound, but no longer the least loaded
    assert (policy.choose([a, b], {"prompt": "AAAA"}) is owner) == remembered


def test_prefix_key_reads_prompts_and_messages():
    assert prefix_key({"prompt": "abcdef"}, 3) == prefix_key({"prompt": "abcxyz"}, 3)
    assert prefix_key({"prompt": "abcdef"}, 3) != prefix_key({"prompt": "abd"}, 3)
    chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    other_user = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]}
    assert prefix_key(chat, 40) == prefix_key(other_user, 40) != prefix_key(chat, 1000)
    assert prefix_key({"prompt": [1, 2, 3]}, 100) != prefix_key({"prompt": [1, 2, 4]}, 100)


def test_pool_skips_unhealthy_and_tried_instances_and_falls_back_last():
    pool = InstancePool("decode", ("http://a", "http://b", "http://c"), LeastOutstanding())
    a, b, c = pool.instances
    b.healthy = False
    assert pool.pick({}, tried=[a]) is c
    assert pool.pick({}, tried=[a, c]) is b  # no healthy one left untried: the stale mark may be wrong
    assert pool.pick({}, tried=[a, b, c]) is None
    assert pool.can_serve()
    a.healthy = c.healthy = False
    assert not pool.can_serve()
