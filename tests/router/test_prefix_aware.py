"""--policy prefix-aware: prompts that share their first --prefix-chars characters stay on one
replica (whose prefix cache holds them), while other prompts still spread."""

from __future__ import annotations

import httpx

from tests.router.conftest import requests_by_instance, start_router

SHARED = "You are a terse assistant. Answer in one word. " * 3  # 141 characters, over --prefix-chars 100


def test_prompts_with_one_prefix_land_on_one_replica(replicas):
    flags = ("--policy", "prefix-aware", "--prefix-chars", "100")
    with start_router("--replica", *(s.url for s in replicas), *flags) as r:
        placements = []
        for group in ("A", "B"):
            before = requests_by_instance(r.url)
            for question in ("Sky color?", "Grass color?", "Snow color?", "Coal color?"):
                body = {"prompt": f"{group}: {SHARED}{question}", "max_tokens": 2, "temperature": 0}
                assert httpx.post(f"{r.url}/v1/completions", json=body, timeout=60).status_code == 200
            after = requests_by_instance(r.url)
            placements.append({url: n - before.get(url, 0) for url, n in after.items() if n > before.get(url, 0)})
    assert [list(p.values()) for p in placements] == [[4], [4]], placements
    assert placements[0].keys() != placements[1].keys(), "an idle pair should take one prefix each"
