"""Load-balancing policies: which of the candidate instances gets a request. `create_policy` builds
one by its --policy name; each pool holds its own."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from tachyon.router.instance import Instance

PREFIX_MAP_SIZE = 65536  # prompt prefixes remembered by prefix-aware (least recently used dropped)


class Policy(Protocol):
    def choose(self, candidates: list[Instance], body: dict) -> Instance: ...


class LeastOutstanding:
    """The instance with the lowest load; ties taken in turn, so an idle pool still spreads requests."""

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: list[Instance], body: dict) -> Instance:
        lowest = min(i.load for i in candidates)
        tied = [i for i in candidates if i.load == lowest]
        self._turn += 1
        return tied[self._turn % len(tied)]


class PrefixAware:
    """Sends prompts that start alike to the instance that served that start before, where its
    prefix cache still holds the KV, unless it is now busier than the least-loaded candidate by
    more than `imbalance` requests; then least-outstanding, and the new choice is remembered."""

    def __init__(self, prefix_chars: int, imbalance: int, capacity: int = PREFIX_MAP_SIZE) -> None:
        self.prefix_chars, self.imbalance, self.capacity = prefix_chars, imbalance, capacity
        self._owners: OrderedDict[bytes, Instance] = OrderedDict()
        self._fallback = LeastOutstanding()

    def choose(self, candidates: list[Instance], body: dict) -> Instance:
        key = prefix_key(body, self.prefix_chars)
        owner = self._owners.get(key)
        lowest = min(i.load for i in candidates)
        if owner in candidates and owner.load - lowest <= self.imbalance:
            chosen = owner
        else:
            chosen = self._fallback.choose(candidates, body)
        self._owners[key] = chosen
        self._owners.move_to_end(key)
        if len(self._owners) > self.capacity:
            self._owners.popitem(last=False)
        return chosen


def prefix_key(body: dict, prefix_chars: int) -> bytes:
    """A hash of the first `prefix_chars` characters of the prompt (chat: of the messages' JSON)."""
    prompt = body["messages"] if "messages" in body else body.get("prompt", "")
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    return hashlib.blake2b(text[:prefix_chars].encode(), digest_size=16).digest()


POLICIES: dict[str, Callable[[int, int], Policy]] = {
    "least-outstanding": lambda prefix_chars, imbalance: LeastOutstanding(),
    "prefix-aware": PrefixAware,
}


def create_policy(name: str, prefix_chars: int, imbalance: int) -> Policy:
    return POLICIES[name](prefix_chars, imbalance)
