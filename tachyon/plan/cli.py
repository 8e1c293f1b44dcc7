"""`tachyon plan` (capacity plan of a model, scheme and GPU: memory, KV capacity, roofline latency and
throughput, GPUs for a target load) and `tachyon plan calibrate` (fit the roofline's efficiency factors
on this machine with the real engine). `tachyon.cli.build_parser` registers both via `add_plan_parser`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tachyon.plan.catalog import known_gpus

_EPILOG = f"""\
models: a config.json, a local HF folder, a .gguf file, a Hugging Face Hub id (only its config.json is
downloaded), or nothing for the default model (SmolLM2-135M).
GPUs (--gpu): {", ".join(known_gpus())}; custom (give --memory-gib, --bandwidth-gbs, --tflops);
cpu (this machine, from the profile `tachyon plan calibrate` saved).
schemes (--scheme): bf16 (no quantization; also fp16), W8A16, W4A16, W4A16_ASYM, W8A8, FP8_DYNAMIC, FP8;
add --sparsity 2:4 for pruned weights (stored dense: no memory saved).

examples:
  tachyon plan --model meta-llama/Llama-3.1-8B --gpu H100-SXM --scheme W4A16 --max-model-len 32768
  tachyon plan --model ./Qwen2.5-7B/config.json --gpu L4 --scheme FP8_DYNAMIC --kv-cache-dtype fp8 \\
      --prompt-len 1024 --output-len 256 --rate 20 --slo-ttft-ms 500 --slo-itl-ms 50 --plot plan.html
  tachyon plan calibrate                  # on this machine, the default model; then:
  tachyon plan --gpu cpu --kv-cache-memory 268435456 --json
"""


def add_plan_parser(sub) -> None:
    plan = sub.add_parser(
        "plan",
        help="capacity planning: memory, KV capacity, concurrency, latency, throughput and GPU count for a "
        "model, scheme and GPU (and `plan calibrate` to fit it to this machine)",
        description="Plan a deployment from the model's config alone: weight memory by layer type, KV cache "
        "capacity, whether it fits, roofline decode/prefill times, and GPUs for a target load under SLOs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(plan)
    _add_machine_args(plan)
    _add_engine_args(plan)
    _add_workload_args(plan)
    _add_output_args(plan)
    plan.set_defaults(func=_run_plan)
    commands = plan.add_subparsers(
        dest="plan_command", metavar="{calibrate}", help="calibrate: fit the roofline to this machine (see its --help)"
    )
    _add_calibrate_parser(commands)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and scheme")
    g.add_argument("--model", default=None, help="config.json, HF folder, .gguf file or Hub id (default: SmolLM2-135M)")
    g.add_argument("--scheme", default="bf16", help="bf16 (no quantization) or a preset: W8A16, W4A16, W4A16_ASYM, "
                   "W8A8, FP8_DYNAMIC, FP8 (default: bf16)")  # fmt: skip
    g.add_argument("--sparsity", default=None, help="2:4: weights pruned 2:4 (stored dense: no memory saved)")
    g.add_argument("--group-size", type=int, default=None, help="input columns per scale of grouped schemes "
                   "(default 128; -1: per output channel)")  # fmt: skip


def _add_machine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("machine")
    g.add_argument("--gpu", default="H100-SXM", help="GPU type from the catalog, custom, or cpu (default: H100-SXM)")
    g.add_argument("--profile", default=None, help="a calibrated profile (JSON from `tachyon plan calibrate`): "
                   "its machine figures and efficiency factors replace the catalog's")  # fmt: skip
    g.add_argument("--memory-gib", type=float, default=None, help="override: device memory, GiB")
    g.add_argument("--bandwidth-gbs", type=float, default=None, help="override: memory bandwidth, GB/s")
    g.add_argument("--tflops", type=float, default=None, help="override: dense 16-bit matmul peak, TFLOP/s")
    g.add_argument("--fp8-tflops", type=float, default=None, help="override: dense fp8 peak, TFLOP/s (0: none)")
    g.add_argument("--int8-tops", type=float, default=None, help="override: dense int8 peak, TOP/s")
    g.add_argument("--link-gbs", type=float, default=None, help="override: GPU-to-GPU bandwidth per direction, GB/s")
    g.add_argument("--num-gpus", type=int, default=None, help="GPUs on hand: report the load they serve")
    g.add_argument("--tensor-parallel-size", "--tp", type=int, default=1, help="GPUs per replica, weights and KV "
                   "heads split as vLLM does (Tachyon's engine runs 1 today; default: 1)")  # fmt: skip


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine flags (as `tachyon serve` names them)")
    g.add_argument("--max-model-len", type=int, default=None, help="longest sequence (default: the model's)")
    g.add_argument("--dtype", default="auto", help="model dtype: auto (bf16 on GPU, float32 on CPU), bfloat16, "
                   "float16, float32")  # fmt: skip
    g.add_argument("--kv-cache-dtype", default="auto", help="auto (the model dtype), fp8 or int8 (8-bit with a "
                   "4-byte scale per token and head)")  # fmt: skip
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of GPU memory the engine "
                   "takes (default: 0.9)")  # fmt: skip
    g.add_argument("--kv-cache-memory", type=int, default=None, help="KV cache budget in bytes, as the engine's "
                   "flag (CPU default: 2 GiB); skips the GPU memory estimate")  # fmt: skip
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default: 16)")
    g.add_argument("--max-num-seqs", type=int, default=256, help="most sequences per step (default: 256)")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget per step (default: 2048)")


def _add_workload_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workload")
    g.add_argument("--prompt-len", type=int, default=512, help="mean prompt tokens (default: 512)")
    g.add_argument("--output-len", type=int, default=128, help="mean output tokens (default: 128)")
    g.add_argument("--rate", type=float, default=None, help="target requests/s over all replicas")
    g.add_argument("--concurrency", type=int, default=None, help="target requests in flight over all replicas")
    g.add_argument("--slo-ttft-ms", type=float, default=None, help="time-to-first-token limit, ms")
    g.add_argument("--slo-itl-ms", type=float, default=None, help="inter-token latency limit, ms")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the plan as JSON instead of the table")
    g.add_argument("--output", default=None, help="also write the plan as JSON to this file")
    g.add_argument("--plot", default=None, help="write throughput and ITL against concurrency: .svg or .html")


def _add_calibrate_parser(commands) -> None:
    cal = commands.add_parser(
        "calibrate",
        help="fit the roofline's efficiency factors on this machine with the real engine",
        description="Measure this machine's copy bandwidth and matmul rate, run the engine's decode at each "
        "--batch-sizes value, fit bandwidth/compute efficiency and a per-step overhead, print the fit's error "
        "per batch size and save the profile.",
    )
    cal.add_argument("--model", default=None, help="model to run (default: SmolLM2-135M); dense weights")
    cal.add_argument("--batch-sizes", default="1,4,16,32", help="comma-separated decode batch sizes (default: "
                     "1,4,16,32)")  # fmt: skip
    cal.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per sequence (default: 32)")
    cal.add_argument("--output-len", type=int, default=24, help="tokens decoded per sequence (default: 24)")
    cal.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    cal.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: one per core; "
                     "on a machine shared with other jobs, fewer threads measure more steadily)")  # fmt: skip
    cal.add_argument("--gpu", default=None, help="on CUDA: the catalog GPU to fit against (default: measure)")
    cal.add_argument("--output", default=None, help="profile path (default: ~/.cache/tachyon/plan/<device>.json)")
    cal.set_defaults(func=_run_calibrate)


def _run_plan(args: argparse.Namespace) -> int:
    from tachyon.plan.planner import PlanConfig, create_plan
    from tachyon.plan.report import plan_to_dict, render_text, write_plot
    from tachyon.plan.workload import Workload

    overrides = {
        "memory_gib": args.memory_gib,
        "bandwidth_gbs": args.bandwidth_gbs,
        "bf16_tflops": args.tflops,
        "fp8_tflops": args.fp8_tflops,
        "int8_tops": args.int8_tops,
        "link_gbs": args.link_gbs,
    }
    workload = Workload(
        args.prompt_len, args.output_len, args.rate, args.concurrency, args.slo_ttft_ms, args.slo_itl_ms
    )
    plan = create_plan(
        PlanConfig(
            model=args.model,
            scheme=args.scheme,
            sparsity=args.sparsity,
            group_size=args.group_size,
            gpu=args.gpu,
            gpu_overrides=overrides,
            profile=args.profile,
            num_gpus=args.num_gpus,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            kv_cache_memory=args.kv_cache_memory,
            block_size=args.block_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            workload=workload,
        )
    )
    data = plan_to_dict(plan)
    print(json.dumps(data, indent=2) if args.json else render_text(plan), end="\n" if args.json else "")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    if args.plot:
        write_plot(plan, args.plot)
        print(f"plot: {os.path.abspath(args.plot)}", file=sys.stderr)
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    from tachyon.plan.calibrate import CalibrationConfig, calibrate
    from tachyon.plan.profile import default_profile_path, save_profile

    try:
        batches = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise ValueError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    config = CalibrationConfig(
        args.model, batches, args.prompt_len, args.output_len, args.gpu, args.device, args.threads
    )
    profile = calibrate(config)
    path = args.output or default_profile_path(profile.device)
    save_profile(profile, path)
    e, m = profile.efficiency, profile.machine
    print(f"machine: {m.name}: {m.bandwidth_gbs:.1f} GB/s copy, {m.bf16_tflops * 1e3:.1f} GFLOP/s {profile.dtype}")
    print(
        f"fitted: bandwidth {e.bandwidth:.3f}, compute {e.compute:.3f}, step overhead {e.step_overhead_s * 1e3:.2f} ms"
    )
    print(f"{'batch':>6}{'context':>9}{'measured tok/s':>16}{'predicted tok/s':>17}{'error':>9}")
    for r in profile.measurements:
        print(f"{r.batch:>6}{r.context_len:>9g}{r.measured_tok_s:>16.2f}{r.predicted_tok_s:>17.2f}{r.error_pct:>8.1f}%")
    load = profile.meta["load_average"]
    print(f"load average {load[0]:.2f} before, {load[1]:.2f} after, on {profile.meta['num_cpus']} CPUs "
          "(other processes slow decode down: calibrate on a quiet machine)")  # fmt: skip
    print(f"profile: {path}")
    return 0
