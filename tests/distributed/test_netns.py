"""Disaggregated serving across "hosts": the prefill and the decode instance each run in their own network
namespace with their own address on a bridged LAN, as two machines would; the router reaches both over it
and the decode instance fetches KV from the prefill instance's address there. Needs root and `ip netns`
(skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import httpx
import pytest

from tachyon.entrypoints.llm import LLM
from tachyon.sampling_params import SamplingParams
from tests.server.conftest import TachyonProcess, scrape

SUBNET = "10.231.7"
PROMPT = "The history of the Roman Empire is long and complicated, and historians disagree. " * 4 + "In short,"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"tachyon-probe-{os.getpid()}"
    try:
        ip("netns", "add", name)
        ip("netns", "del", name)
        return True
    except subprocess.CalledProcessError:
        return False


pytestmark = pytest.mark.skipif(not can_make_namespaces(), reason="needs root and `ip netns`")


@contextlib.contextmanager
def lan(num_hosts: int):
    """A bridge in this namespace (.1) and `num_hosts` namespaces on it (.2, .3, ...); yields their names."""
    tag = os.getpid() % 10000
    bridge, hosts = f"tbr{tag}", [f"tachyon-h{i}-{tag}" for i in range(num_hosts)]
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, host in enumerate(hosts):
            outside, inside = f"tv{tag}o{i}", f"tv{tag}i{i}"
            ip("netns", "add", host)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", host)
            ip("link", "set", outside, "master", bridge, "up")
            ip("-n", host, "addr", "add", f"{SUBNET}.{i + 2}/24", "dev", inside)
            ip("-n", host, "link", "set", inside, "up")
            ip("-n", host, "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in hosts:
            subprocess.run(["ip", "netns", "del", host], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_prefill_and_decode_on_separate_hosts(shallow_model_dir):
    llm = LLM(shallow_model_dir, kv_cache_memory=32 * 2**20)
    expected = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0))[0].outputs[0].text
    flags = ["--kv-cache-memory", str(64 * 2**20), "--max-model-len", "512", "--uvicorn-log-level", "warning"]
    with lan(2) as (prefill_host, decode_host), contextlib.ExitStack() as stack:
        prefill_ip, decode_ip = f"{SUBNET}.2", f"{SUBNET}.3"
        prefill = TachyonProcess(
            ["serve", shallow_model_dir, "--host", prefill_ip, "--role", "prefill", *flags],
            ("ip", "netns", "exec", prefill_host),
            prefill_ip,
        )
        stack.callback(prefill.stop)
        decode = TachyonProcess(
            ["serve", shallow_model_dir, "--host", decode_ip, "--role", "decode", *flags],
            ("ip", "netns", "exec", decode_host),
            decode_ip,
        )
        stack.callback(decode.stop)
        router = TachyonProcess(["router", "--prefill", prefill.url, "--decode", decode.url])
        stack.callback(router.stop)
        body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
        got = httpx.post(f"{router.url}/v1/completions", json=body, timeout=120).json()
        assert got["choices"][0]["text"] == expected
        assert scrape(decode.url)["tachyon:kv_transfer_blocks_total"] > 0  # the KV crossed the LAN
