"""Continuous batching with one token budget per step (no separate prefill and decode phases).

Each step: running requests first (one decode token each, plus the draft tokens speculative decoding
proposed for it, or their next prefill chunk), then
waiting requests in FCFS / priority order while the token budget, `max_num_seqs` and the KV pool
allow. A running request that cannot get a block preempts the lowest-priority, newest running
request (recompute: its blocks are freed and it re-enters the queue at the front). The model
runner executes the returned `SchedulerOutput`; the engine then calls `update_after_step`.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from tachyon.engine.kv_cache_manager import KVCacheManager
from tachyon.engine.request import Request, RequestStatus

logger = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    policy: str = "fcfs"  # or "priority": lower value first

    def __post_init__(self) -> None:
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"--scheduling-policy must be fcfs or priority, got {self.policy!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int  # tokens to run this step, starting at request.num_computed_tokens; drafts included
    spec_token_ids: list[int] = field(default_factory=list)  # draft tokens to verify, after the known ones

    @property
    def completes_sequence(self) -> bool:
        """True when this step reaches the last known token, so a new token is sampled."""
        num_known = self.num_new_tokens - len(self.spec_token_ids)
        return self.request.num_computed_tokens + num_known == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.num_scheduled_tokens = 0  # tokens run through the model since start-up

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add_request(self, req: Request) -> None:
        if self.config.policy == "priority":
            index = next((i for i, r in enumerate(self.waiting) if self._rank(r) > self._rank(req)), len(self.waiting))
            self.waiting.insert(index, req)
        else:
            self.waiting.append(req)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Remove a request wherever it is and return its blocks (finish, abort, error)."""
        req.status = status
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        scheduled: set[int] = set()
        for req in list(self.running):
            if budget == 0 or req not in self.running:
                continue
            num_known = req.num_tokens - req.num_computed_tokens
            spec = req.spec_token_ids[: max(0, budget - num_known)]
            if spec and not self.kv.allocate_slots(req, num_known + len(spec)):
                spec = []  # drafts are optional: drop them before preempting anyone
            num_new = min(num_known, budget) + len(spec)
            while not self.kv.allocate_slots(req, num_new):
                victim = self._pick_victim(exclude=scheduled)
                self._preempt(victim, out)
                if victim is req:
                    break
            else:
                out.scheduled.append(ScheduledRequest(req, num_new, spec))
                scheduled.add(id(req))
                budget -= num_new
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        skipped: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            if self._sibling_prefilling(req):
                skipped.append(self.waiting.popleft())  # wait to share the sibling's prompt blocks
                continue
            cached = self.kv.find_cached_prefix(req) if req.num_computed_tokens == 0 else []
            num_cached_tokens = len(cached) * self.kv.block_size
            num_new = min(req.num_tokens - req.num_computed_tokens - num_cached_tokens, budget)
            if not self.kv.allocate_slots(req, num_new, cached):
                break
            self.waiting.popleft()
            if req.status == RequestStatus.WAITING:
                self.kv.record_lookup(req.num_prompt_tokens, num_cached_tokens)
                req.num_cached_prompt_tokens = num_cached_tokens
            req.num_computed_tokens += num_cached_tokens
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append(ScheduledRequest(req, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))

    def _sibling_prefilling(self, req: Request) -> bool:
        if req.parent_id is None or not self.kv.enable_prefix_caching:
            return False
        return any(r.parent_id == req.parent_id and r.is_prefilling for r in self.running)

    def _rank(self, req: Request) -> tuple[int, float]:
        return (req.priority, req.arrival_time) if self.config.policy == "priority" else (0, req.arrival_time)

    def _pick_victim(self, exclude: set[int]) -> Request:
        """The lowest-priority, most recently arrived running request (not already scheduled if possible)."""
        candidates = [r for r in self.running if id(r) not in exclude] or self.running
        return max(candidates, key=self._rank)

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        out.scheduled = [s for s in out.scheduled if s.request is not req]
        self.kv.free(req)
        req.num_computed_tokens = req.num_draft_computed_tokens = 0
        req.clear_draft()
        req.status = RequestStatus.PREEMPTED
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        out.preempted.append(req)
        logger.debug("preempted %s (recompute %d tokens)", req.request_id, req.num_tokens)

    def update_after_step(self, out: SchedulerOutput, num_rejected: dict[str, int] | None = None) -> None:
        """Advance computed-token counts, roll back the KV slots of rejected draft tokens (request id ->
        how many), and publish newly full blocks to the prefix cache."""
        self.num_scheduled_tokens += out.num_tokens
        for s in out.scheduled:
            req = s.request
            req.num_computed_tokens += s.num_new_tokens - (num_rejected or {}).get(req.request_id, 0)
            if s.spec_token_ids:
                req.clear_draft()
                self.kv.trim(req, req.num_computed_tokens + 1)  # + the token this step sampled
            self.kv.cache_full_blocks(req)
