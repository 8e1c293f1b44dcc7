"""Disaggregated serving across "hosts": the prefill and the decode instance each run in their own network
namespace with their own address on a bridged LAN, as two machines would; the router reaches both over it
and the decode instance fetches KV from the prefill instance's address there. Needs root and `ip netns`
(skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

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


def interface(host_index: int) -> str:
    """The name of host i's end of its link to the bridge (for GLOO_SOCKET_IFNAME)."""
    return f"tv{os.getpid() % 10000}i{host_index}"


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
            outside, inside = f"tv{tag}o{i}", interface(i)
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


@pytest.mark.parametrize("connector", ["tcp", "torch"])
def test_prefill_and_decode_on_separate_hosts(shallow_model_dir, connector):
    llm = LLM(shallow_model_dir, kv_cache_memory=32 * 2**20)
    expected = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0))[0].outputs[0].text
    flags = ["--kv-cache-memory", str(64 * 2**20), "--max-model-len", "512", "--uvicorn-log-level", "warning"]
    with lan(2) as (prefill_host, decode_host), contextlib.ExitStack() as stack:
        prefill_ip, decode_ip = f"{SUBNET}.2", f"{SUBNET}.3"
        # a fixed KV export port, below the ephemeral range: with `--kv-port 0` the OS could hand the
        # export server the very port TachyonProcess picked for HTTP, which it only binds afterwards
        prefill = TachyonProcess(
            ["serve", shallow_model_dir, "--host", prefill_ip, "--role", "prefill", "--kv-port", "7001", *flags],
            ("ip", "netns", "exec", prefill_host),
            prefill_ip,
        )
        stack.callback(prefill.stop)
        decode = TachyonProcess(
            ["serve", shallow_model_dir, "--host", decode_ip, "--role", "decode", "--kv-connector", connector, *flags],
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


def test_tensor_parallel_across_hosts_with_torchrun(tiny_dir):
    """Two hosts, one rank each, joined by torchrun's c10d rendezvous: the TP = 1 text."""
    expected = LLM(tiny_dir, kv_cache_memory=32 * 2**20).generate(
        ["Hello there"], SamplingParams(max_tokens=8, temperature=0)
    )
    tachyon = [sys.executable, "-m", "tachyon.cli", "generate", tiny_dir, "-tp", "2", "--max-tokens", "8"]
    tachyon += ["--prompt", "Hello there", "--kv-cache-memory", str(32 * 2**20)]
    with lan(2) as hosts:
        processes = []
        for i, host in enumerate(hosts):
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
            torchrun += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{SUBNET}.2:29400"]
            torchrun += ["--rdzv-conf", f"is_host={str(i == 0).lower()}", "--local-addr", f"{SUBNET}.{i + 2}"]
            env = ["env", f"GLOO_SOCKET_IFNAME={interface(i)}", "HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=1"]
            command = ["ip", "netns", "exec", host, *env, *torchrun, "--no-python", *tachyon]
            processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=240) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    printed = "".join(out for out, _ in outputs)  # rank 0 prints, on whichever host the rendezvous put it
    assert f"### Hello there\n{expected[0].outputs[0].text}\n" in printed
