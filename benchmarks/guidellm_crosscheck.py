"""Cross-check `tachyon bench` with GuideLLM, an independent load generator (issue #5): both tools
drive one server with the same fixed workload (synthetic prompts of --prompt-tokens, exactly
--output-tokens generated with ignore_eos, --concurrency streams, --requests per run), and this
prints each tool's request and output-token throughput and mean TTFT with the ratio tachyon /
GuideLLM. The target is agreement within 10%. GuideLLM is not a Tachyon dependency:

    pip install guidellm      # into any environment; pass --guidellm PATH when it is not on PATH
    python benchmarks/guidellm_crosscheck.py [--url http://127.0.0.1:8000] [--repeats 2] [--json out.json]

Without --url it serves the default model (SmolLM2-135M, converted from its GGUF to an HF folder)
on a free port and stops it at the end. GuideLLM reads the tokenizer from that folder (or from
--tokenizer), so neither tool needs a network. A short discarded run warms the server up. Runs
alternate which tool goes first, so slow drift of a shared machine does not favour one of them;
--together runs both tools at once instead, so both see the same server under the same background
load (the server then carries twice --concurrency streams).

On a CPU server, where one prefill takes hundreds of milliseconds, mean TTFT at --concurrency > 1
also depends on how each tool lines its streams up (ours start together and share one batched
prefill; GuideLLM's worker processes start theirs apart), so compare TTFT there with
--concurrency 1. On a shared machine, --together is the only mode whose figures are stable:

    python benchmarks/guidellm_crosscheck.py --together --concurrency 1 --requests 24 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx

METRICS = (
    ("request_throughput", "requests/s"),
    ("output_throughput", "output tokens/s"),
    ("mean_ttft_ms", "mean TTFT (ms)"),
)
TARGET = 0.10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--url", default=None, help="server to measure (default: start `tachyon serve` on the default model)"
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="HF tokenizer folder of the served model (default: the converted default model)",
    )
    p.add_argument("--guidellm", default=None, help="the guidellm executable (default: on PATH or next to this Python)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4, help="streams kept busy by both tools")
    p.add_argument("--requests", type=int, default=32, help="requests per run of each tool")
    p.add_argument("--repeats", type=int, default=1, help="runs of each tool, alternating which goes first")
    p.add_argument(
        "--together",
        action="store_true",
        help="run both tools at the same time (each with --concurrency streams), so background load on a "
        "shared machine hits both alike",
    )
    p.add_argument("--json", default=None, help="also write every run's figures here")
    return p.parse_args()


def find_guidellm(path: str | None) -> str:
    candidates = (
        [path] if path else [shutil.which("guidellm"), os.path.join(os.path.dirname(sys.executable), "guidellm")]
    )
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    sys.exit("guidellm not found: `pip install guidellm` (any environment), then pass --guidellm PATH if needed")


def default_model_folder(workdir: str) -> str:
    from tachyon.models.convert import convert_gguf
    from tachyon.models.loader import default_model_path

    return convert_gguf(default_model_path(), os.path.join(workdir, "smollm2"))


@contextlib.contextmanager
def tachyon_server(model_dir: str, workdir: str):
    """`tachyon serve MODEL_DIR` on a free port; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(workdir, "server.log"), "w")
    cmd = [
        sys.executable,
        "-m",
        "tachyon.cli",
        "serve",
        model_dir,
        "--port",
        str(port),
        "--uvicorn-log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}; see its log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.5)
    sys.exit(f"the server at {url} was not healthy after {timeout:.0f} s")


def served_model(url: str) -> str:
    return httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]


def tachyon_command(args, url: str, tokenizer: str, out: str, requests: int) -> list[str]:
    cmd = [sys.executable, "-m", "tachyon.cli", "bench", "--url", url, "--profile", "concurrent"]
    cmd += ["--concurrency", str(args.concurrency), "--max-requests", str(requests)]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--output-tokens", str(args.output_tokens)]
    return [*cmd, "--ignore-eos", "--tokenizer", tokenizer, "--no-progress", "--output", out]


def read_tachyon(out: str) -> dict:
    from tachyon.bench.results import load_json

    s = load_json(out).benchmarks[0].stats
    return {
        "request_throughput": s.request_throughput,
        "output_throughput": s.output_throughput,
        "mean_ttft_ms": s.ttft.mean,
        "completed": s.completed,
        "failed": s.failed,
        "duration_s": s.duration,
    }


def guidellm_command(args, exe: str, url: str, model: str, tokenizer: str, out: str) -> list[str]:
    cmd = [exe, "run", "--backend", f"kind=openai_http,target={url},model={model},request_format=/v1/completions"]
    cmd += ["--profile", f"kind=concurrent,streams={args.concurrency}"]
    cmd += ["--constraint", f"kind=max_requests,count={args.requests}"]
    cmd += ["--tokenizer", f"kind=huggingface_auto,model={tokenizer}"]
    cmd += ["--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},output_tokens={args.output_tokens}"]
    return [*cmd, "--output", f"kind=json,path={out}", "--disable-console"]


def read_guidellm(out: str) -> dict:
    """GuideLLM's own figures for successful requests: its requests/s and output tokens/s are the
    completed count over the benchmark's duration, as ours are."""
    with open(out) as f:
        bench = json.load(f)["benchmarks"][0]
    m = bench["metrics"]
    return {
        "request_throughput": m["requests_per_second"]["successful"]["mean"],
        "output_throughput": m["output_tokens_per_second"]["successful"]["mean"],
        "mean_ttft_ms": m["time_to_first_token_ms"]["successful"]["mean"],
        "completed": m["request_totals"]["successful"],
        "failed": m["request_totals"]["errored"],
        "duration_s": bench["duration"],
    }


def run_tools(commands: dict[str, list[str]], together: bool) -> None:
    """Runs the commands one after another in the given order, or all at once."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not together:
        for cmd in commands.values():
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        return
    procs = {tool: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env) for tool, cmd in commands.items()}
    for tool, proc in procs.items():
        if proc.wait() != 0:
            sys.exit(f"{tool} failed with exit code {proc.returncode}")


def mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def report(runs: dict[str, list[dict]]) -> bool:
    """Prints both tools' means and the ratios; True when every ratio is within TARGET of 1."""
    print(f"\n{'metric':<18}{'GuideLLM':>12}{'tachyon':>12}{'tachyon/GuideLLM':>18}")
    ok = True
    for key, name in METRICS:
        g, t = mean(runs["guidellm"], key), mean(runs["tachyon"], key)
        ok &= abs(t / g - 1) <= TARGET
        print(f"{name:<18}{g:>12.3f}{t:>12.3f}{t / g:>18.3f}")
    for tool, tool_runs in runs.items():
        per_run = ", ".join(f"{r['request_throughput']:.3f} req/s {r['mean_ttft_ms']:.0f} ms" for r in tool_runs)
        print(f"{tool} runs: {per_run}")
    print(f"within {TARGET:.0%}: {'yes' if ok else 'NO'}")
    return ok


def main() -> int:
    args = parse_args()
    exe = find_guidellm(args.guidellm)
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        tokenizer = args.tokenizer or default_model_folder(workdir)
        url = args.url or stack.enter_context(tachyon_server(tokenizer, workdir))
        model = served_model(url)
        mode = "both tools at once" if args.together else "one tool at a time"
        print(f"{url} ({model}): {args.requests} requests x {args.concurrency} streams per tool, {mode}, "
              f"{args.prompt_tokens} prompt / {args.output_tokens} output tokens", flush=True)  # fmt: skip
        warmup = tachyon_command(args, url, tokenizer, os.path.join(workdir, "warmup.json"), 4 * args.concurrency)
        run_tools({"warm-up": warmup}, together=False)  # discarded: a fresh server is slower at first
        runs: dict[str, list[dict]] = {"guidellm": [], "tachyon": []}
        for i in range(args.repeats):
            outs = {tool: os.path.join(workdir, f"{tool}-{i}.json") for tool in runs}
            commands = {
                "guidellm": guidellm_command(args, exe, url, model, tokenizer, outs["guidellm"]),
                "tachyon": tachyon_command(args, url, tokenizer, outs["tachyon"], args.requests),
            }
            order = list(commands) if i % 2 == 0 else list(reversed(commands))
            run_tools({tool: commands[tool] for tool in order}, args.together)
            for tool in order:
                runs[tool].append(read_guidellm(outs[tool]) if tool == "guidellm" else read_tachyon(outs[tool]))
                print(f"run {i} {tool}: {json.dumps({k: round(v, 3) for k, v in runs[tool][-1].items()})}", flush=True)
    ok = report(runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": vars(args) | {"url": url, "model": model}, "runs": runs}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
