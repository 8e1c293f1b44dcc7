"""Soak test for `tachyon serve`: N concurrent streaming clients for a fixed time against a server on
127.0.0.1, then: errors, completed requests, and whether memory (server RSS) or KV usage grew
between the first and the last 10 seconds.

    python benchmarks/soak.py                      # starts a server on the default model itself
    python benchmarks/soak.py --url http://127.0.0.1:8000 --clients 64 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "List five uses for a paperclip.",
    "Describe the water cycle to a child.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tachyon.cli",
        "serve",
        *([model] if model else []),
        "--port",
        str(port),
        "--uvicorn-log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become healthy in 180 s")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


async def client_loop(http: httpx.AsyncClient, url: str, model: str, stop_at: float, stats: dict, seed: int) -> None:
    i = seed
    while time.monotonic() < stop_at:
        body = {
            "model": model,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": stats["max_tokens"],
            "stream": True,
            "temperature": 0.8,
            "seed": i,
        }
        i += 1
        try:
            async with http.stream("POST", f"{url}/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    stats["errors"].append(f"HTTP {resp.status_code}")
                    continue
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]" and '"error"' in line:
                        stats["errors"].append(line[:200])
            stats["completed"] += 1
        except httpx.HTTPError as e:
            stats["errors"].append(repr(e))


async def sampler(url: str, pid: int | None, stop_at: float, samples: list) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() < stop_at:
            text = (await http.get(f"{url}/metrics")).text
            values = {
                line.split(" ")[0]: float(line.split(" ")[-1])
                for line in text.splitlines()
                if line.startswith("tachyon:") and " " in line
            }
            samples.append(
                (
                    time.monotonic(),
                    values.get("tachyon:kv_cache_usage_perc", 0.0),
                    values.get("tachyon:num_requests_running", 0.0),
                    rss_mib(pid) if pid else None,
                )
            )
            await asyncio.sleep(1.0)


def window(samples: list, start: float, end: float, column: int) -> float | None:
    values = [s[column] for s in samples if start <= s[0] < end and s[column] is not None]
    return statistics.mean(values) if values else None


async def soak(url: str, args, pid: int | None) -> dict:
    async with httpx.AsyncClient(timeout=httpx.Timeout(120), limits=httpx.Limits(max_connections=args.clients)) as http:
        model = (await http.get(f"{url}/v1/models")).json()["data"][0]["id"]
        stats = {"completed": 0, "errors": [], "max_tokens": args.max_tokens}
        samples: list = []
        t0 = time.monotonic()
        stop_at = t0 + args.duration
        await asyncio.gather(
            sampler(url, pid, stop_at, samples),
            *(client_loop(http, url, model, stop_at, stats, i) for i in range(args.clients)),
        )
        end = time.monotonic()
        await asyncio.sleep(1.0)  # the last aborts/finishes land within a step
        after = {
            line.split(" ")[0]: float(line.split(" ")[-1])
            for line in (await http.get(f"{url}/metrics")).text.splitlines()
            if line.startswith("tachyon:") and " " in line
        }
    head, tail = (t0, t0 + 10), (stop_at - 10, stop_at)
    return {
        "clients": args.clients,
        "duration_s": round(end - t0, 1),
        "completed": stats["completed"],
        "errors": len(stats["errors"]),
        "first_errors": stats["errors"][:3],
        "kv_usage_first_10s": window(samples, *head, 1),
        "kv_usage_last_10s": window(samples, *tail, 1),
        "running_first_10s": window(samples, *head, 2),
        "running_last_10s": window(samples, *tail, 2),
        "rss_mib_first_10s": window(samples, *head, 3),
        "rss_mib_last_10s": window(samples, *tail, 3),
        "kv_usage_after": after.get("tachyon:kv_cache_usage_perc"),
        "running_after": after.get("tachyon:num_requests_running"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running server (default: start one on 127.0.0.1)")
    parser.add_argument("--model", default=None, help="model for the server this script starts")
    parser.add_argument("--clients", type=int, default=64, help="concurrent streaming clients")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request")
    args = parser.parse_args()
    proc, url = (None, args.url) if args.url else start_server(args.model)
    try:
        result = asyncio.run(soak(url, args, proc.pid if proc else None))
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
    print(json.dumps(result, indent=2))
    if result["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
