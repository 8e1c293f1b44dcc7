from tachyon.engine.kv_cache_manager import KVCacheManager
from tachyon.engine.request import RequestStatus
from tachyon.engine.scheduler import Scheduler, SchedulerConfig
from tests.engine.helpers import make_request


def _step(sched: Scheduler, sampled_token: int = 7):
    """Schedule, pretend the model ran, append a token to every request that completed its tokens."""
    out = sched.schedule()
    completing = [s.request for s in out.scheduled if s.completes_sequence]
    sched.update_after_step(out)
    for req in completing:
        req.append_token(sampled_token)
    return out


def test_chunked_prefill_mixes_with_decodes_under_token_budget():
    kv = KVCacheManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=8), kv)
    a, b = make_request("a", list(range(5))), make_request("b", list(range(100, 120)))
    sched.add_request(a)
    sched.add_request(b)
    out = _step(sched)
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 5), ("b", 3)]
    out = _step(sched)  # a decodes one token, b continues its prompt
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 1), ("b", 7)]
    assert b.num_computed_tokens == 10 and b.num_output_tokens == 0


def test_max_num_seqs_limits_admission():
    sched = Scheduler(SchedulerConfig(max_num_seqs=2), KVCacheManager(64, 4))
    for i in range(3):
        sched.add_request(make_request(str(i), [1, 2, 3]))
    out = sched.schedule()
    assert [s.request.request_id for s in out.scheduled] == ["0", "1"]
    assert [r.request_id for r in sched.waiting] == ["2"]


def test_preemption_recomputes_newest_and_frees_its_blocks():
    kv = KVCacheManager(4, 4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(), kv)
    old, new = make_request("old", [1, 2, 3, 4]), make_request("new", [5, 6, 7, 8])
    sched.add_request(old)
    sched.add_request(new)
    _step(sched)  # both prefilled: 2 blocks used, each needs a second block to decode
    _step(sched)  # both decode into their 2nd block: all 4 blocks used
    assert kv.num_free_blocks == 0
    for _ in range(3):
        _step(sched)
    out = _step(sched)  # old needs a 3rd block: the newest request is preempted
    assert [r.request_id for r in out.preempted] == ["new"]
    assert new.status == RequestStatus.PREEMPTED and new.num_computed_tokens == 0 and new.block_ids == []
    assert [r.request_id for r in sched.waiting] == ["new"]
    assert sched.num_preemptions == 1
    assert len(old.block_ids) == 3


def test_priority_policy_orders_waiting_and_preempts_lowest_priority():
    sched = Scheduler(SchedulerConfig(policy="priority", max_num_seqs=1), KVCacheManager(64, 4))
    low, high = make_request("low", [1, 2]), make_request("high", [3, 4])
    low.priority, high.priority = 5, 0
    sched.add_request(low)
    sched.add_request(high)
    assert [s.request.request_id for s in sched.schedule().scheduled] == ["high"]


def test_finish_frees_blocks_wherever_the_request_is():
    kv = KVCacheManager(16, 4)
    sched = Scheduler(SchedulerConfig(), kv)
    a, b = make_request("a", list(range(6))), make_request("b", list(range(6)))
    sched.add_request(a)
    _step(sched)
    sched.add_request(b)
    sched.finish(a, RequestStatus.FINISHED_ABORTED)
    sched.finish(b, RequestStatus.FINISHED_ABORTED)
    assert not sched.has_unfinished and kv.num_free_blocks == 16


def test_bad_config_names_the_flag():
    import pytest

    with pytest.raises(ValueError, match="--max-num-seqs"):
        SchedulerConfig(max_num_seqs=0)
