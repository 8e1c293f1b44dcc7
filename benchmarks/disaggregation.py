"""Colocated vs disaggregated prefill/decode on the same resources, under a mixed workload: steady
streaming decodes (short prompts, long outputs) with long-prompt requests arriving among them.

Colocated: two plain instances behind `tachyon router --replica`. Disaggregated: one `--role prefill` and
one `--role decode` instance behind `tachyon router --prefill/--decode`. Each instance gets the same share
of the machine (torch threads = cores / 2), so both layouts use the same total resources. Reports TTFT
and ITL p50/p99 of each request class and the KV transfer bandwidth the decode instance measured.

    python benchmarks/disaggregation.py [--model DIR] [--duration 60] [--streams 6] [--long-every 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import httpx

SHORT = "Write a long story about a lighthouse keeper and the ships she watched."
LONG = "The history of the Roman Empire is long and complicated, and historians disagree about much of it. "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(self, args: list[str], threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "tachyon.cli", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(command + ["--uvicorn-log-level", "warning"], env=env)

    def wait_healthy(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.proc.args} exited with {self.proc.returncode}")
            time.sleep(0.5)
        raise SystemExit(f"{self.proc.args} not healthy after {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_layout(layout: str, model: str, threads: int, instance_flags: list[str]) -> tuple[list[Process], str]:
    serve = ["serve", model, *instance_flags]
    if layout == "colocated":
        instances = [Process(serve, threads), Process(serve, threads)]
        routing = ["--replica", *(i.url for i in instances)]
    else:
        instances = [Process([*serve, "--role", "prefill"], threads), Process([*serve, "--role", "decode"], threads)]
        routing = ["--prefill", instances[0].url, "--decode", instances[1].url]
    for i in instances:
        i.wait_healthy()
    router = Process(["router", *routing], 1)
    router.wait_healthy()
    return [*instances, router], router.url


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, record: list) -> None:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    start = time.monotonic()
    times = []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    times.append(time.monotonic())
    if times:
        record.append({"ttft": times[0] - start, "itl": [b - a for a, b in zip(times, times[1:])]})


async def workload(url: str, duration: float, streams: int, long_every: float, long_tokens: int, record: dict):
    long_text = LONG * max(1, long_tokens // 20)
    deadline = time.monotonic() + duration
    async with httpx.AsyncClient(timeout=600) as client:

        async def streamer() -> None:
            while time.monotonic() < deadline:
                await one_request(client, url, SHORT, 128, record["decode"])

        async def long_prompts() -> None:
            tasks = []
            while time.monotonic() < deadline:
                prompt = f"Document {uuid.uuid4().hex}. {long_text}"  # unique from its first token: no prefix hits
                tasks.append(asyncio.create_task(one_request(client, url, prompt, 8, record["long"])))
                await asyncio.sleep(long_every)
            await asyncio.gather(*tasks)

        await asyncio.gather(*(streamer() for _ in range(streams)), long_prompts())


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def summarize(record: dict) -> dict:
    out = {}
    for kind, rows in record.items():
        ttft = [r["ttft"] for r in rows]
        itl = [x for r in rows for x in r["itl"]]
        out[kind] = {
            "requests": len(rows),
            "ttft_p50": percentile(ttft, 0.5),
            "ttft_p99": percentile(ttft, 0.99),
            "itl_p50": percentile(itl, 0.5),
            "itl_p99": percentile(itl, 0.99),
        }
    return out


def kv_transfer(decode_url: str) -> dict:
    values = {}
    for line in httpx.get(f"{decode_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("tachyon:kv_transfer_"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    seconds = values.get("tachyon:kv_transfer_seconds_total", 0.0)
    mib = values.get("tachyon:kv_transfer_bytes_total", 0.0) / 2**20
    return {"fetches": values.get("tachyon:kv_transfer_fetches_total"), "MiB": mib, "MiB_per_s": mib / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2 as HF folder)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per layout")
    parser.add_argument("--streams", type=int, default=6, help="concurrent streaming decodes")
    parser.add_argument("--long-every", type=float, default=3.0, help="seconds between long-prompt requests")
    parser.add_argument("--long-tokens", type=int, default=1500, help="approximate tokens of a long prompt")
    parser.add_argument("--layouts", default="colocated,disaggregated", help="which layouts to run, in order")
    parser.add_argument(
        "--instance-flags",
        default="--max-num-batched-tokens 2048 --kv-cache-memory 1073741824",
        help="extra flags for every instance",
    )
    args = parser.parse_args()
    model = args.model or _default_model_dir()
    threads = max(1, (os.cpu_count() or 2) // 2)
    results = {}
    for layout in args.layouts.split(","):
        processes, url = start_layout(layout, model, threads, args.instance_flags.split())
        try:
            record = {"decode": [], "long": []}
            asyncio.run(workload(url, args.duration, args.streams, args.long_every, args.long_tokens, record))
            results[layout] = summarize(record)
            if layout == "disaggregated":
                results[layout]["kv_transfer"] = kv_transfer(processes[1].url)
        finally:
            for p in processes:
                p.stop()
        print(layout, json.dumps(results[layout], indent=1), flush=True)
    if len(results) == 2:
        ratio = results["disaggregated"]["decode"]["itl_p99"] / results["colocated"]["decode"]["itl_p99"]
        print(f"decode ITL p99, disaggregated / colocated: {ratio:.2f} (goal <= 0.5)")


def _default_model_dir() -> str:
    from tachyon.models.convert import convert_gguf
    from tachyon.models.loader import default_model_path

    folder = os.path.join(os.path.expanduser("~"), ".cache", "tachyon", "smollm2-hf")
    if not os.path.exists(os.path.join(folder, "config.json")):
        convert_gguf(default_model_path(), folder)
    return folder


if __name__ == "__main__":
    main()
