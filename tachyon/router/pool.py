"""The instances of one role (replicas, prefill or decode) and the policy that picks among them.
`pick` is called once per attempt of a request, so a failover never retries an instance."""

from __future__ import annotations

from collections.abc import Collection

from tachyon.router.instance import Instance
from tachyon.router.policy import Policy


class InstancePool:
    def __init__(self, role: str, urls: tuple[str, ...], policy: Policy) -> None:
        self.role = role
        self.instances = [Instance(url, role) for url in urls]
        self.policy = policy

    def can_serve(self) -> bool:
        return any(i.healthy for i in self.instances)

    def pick(self, body: dict, tried: Collection[Instance]) -> Instance | None:
        """The policy's choice among the healthy instances not yet tried; only when none of them is
        left, among the unhealthy ones (their mark may be stale); None when every one was tried."""
        untried = [i for i in self.instances if i not in tried]
        candidates = [i for i in untried if i.healthy] or untried
        return self.policy.choose(candidates, body) if candidates else None
