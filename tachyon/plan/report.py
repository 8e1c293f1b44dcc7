"""Renders a `Plan`: the console table (`render_text`), a JSON-ready dict (`plan_to_dict`) and the plot
of throughput and ITL against concurrency (`write_plot`: .svg or .html, drawn with the bench's SVG
charts, no plotting library). `tachyon plan` (cli.py) calls them.
"""

from __future__ import annotations

import dataclasses
import math
from html import escape

from tachyon.bench.charts import HEIGHT, WIDTH, Series, Threshold, color, line_chart
from tachyon.bench.html_report import STYLE
from tachyon.plan.planner import Plan

__all__ = ["plan_to_dict", "render_text", "write_plot"]

GIB = 2**30


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f} GiB"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def render_text(plan: Plan) -> str:
    sections = [_header(plan), _weights(plan), _memory(plan), _kv(plan), _performance(plan), _workload(plan)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(plan: Plan) -> str:
    g, s, e = plan.gpu, plan.settings, plan.efficiency
    kv = s.kv_cache_dtype if s.kv_cache_dtype != "auto" else f"auto ({s.dtype})"
    source = "calibrated" if e.calibrated else "uncalibrated defaults: run `tachyon plan calibrate` on the hardware"
    return "\n".join(
        [
            f"tachyon plan: {plan.spec.name}, {plan.scheme.name}, dtype {s.dtype}, KV cache {kv}, "
            f"{s.tensor_parallel_size} x {g.name}",
            f"machine: {g.memory_gib:.4g} GiB, {g.bandwidth_gbs:.4g} GB/s, {g.bf16_tflops:.4g} TFLOP/s "
            + ("16-bit" if not plan.on_cpu else s.dtype)
            + (f", {g.fp8_tflops:.4g} fp8" if g.fp8_tflops else "")
            + (f", {g.int8_tops:.4g} int8 TOP/s" if g.int8_tops else "")
            + (f"  [{g.source}]" if g.source else ""),
            f"efficiency: bandwidth {e.bandwidth:.2f}, compute {e.compute:.2f}, step overhead "
            f"{e.step_overhead_s * 1e3:.2f} ms ({source})",
        ]
    )


def _weights(plan: Plan) -> str:
    rows = [f"{'weights (checkpoint)':<44}{'params':>15}{'bytes':>16}{'scales/zp':>13}"]
    for g in plan.memory.stored:
        rows.append(f"  {g.name:<42}{g.num_params:>15,}{g.num_bytes:>16,}{g.overhead_bytes:>13,}")
    total = sum(g.num_params for g in plan.memory.stored)
    rows.append(f"  {'total':<42}{total:>15,}{plan.memory.stored_bytes:>16,}  = {_gib(plan.memory.stored_bytes)}")
    if plan.scheme.sparse_2_4:
        rows.append("  2:4: stored dense with the zeros in place, so it saves no memory (and no time: no 2:4 kernel)")
    if plan.memory.dequantized_at_load:
        where = "on CPU" if plan.on_cpu else f"on {plan.gpu.name} (no fp8 tensor cores)"
        rows.append(f"  {plan.scheme.name} is dequantized to {plan.settings.dtype} at load {where}")
    return "\n".join(rows)


def _memory(plan: Plan) -> str:
    m, s = plan.memory, plan.settings
    per = "per GPU" if not plan.on_cpu else "on the CPU"
    rows = [f"memory {per}", f"  {'device total':<40}{_gib(m.device_bytes):>14}"]
    if s.kv_cache_memory is None and not plan.on_cpu:
        rows.append(f"  {'x --gpu-memory-utilization ' + str(s.gpu_memory_utilization):<40}"
                    f"{_gib(m.device_bytes * s.gpu_memory_utilization):>14}")  # fmt: skip
    rows += [
        f"  {'weights (resident)':<40}{_gib(m.resident_bytes):>14}",
        f"  {'activations, largest step (estimate)':<40}{_gib(m.activation_bytes):>14}",
        f"  {'runtime reserve (estimate)':<40}{_gib(m.reserve_bytes):>14}",
        f"  {'KV cache budget':<40}{_gib(m.kv_budget_bytes):>14}"
        + ("  (--kv-cache-memory)" if s.kv_cache_memory or plan.on_cpu else ""),
    ]
    return "\n".join(rows)


def _kv(plan: Plan) -> str:
    kv, n = plan.memory.kv, plan.max_model_len
    lines = [
        f"KV cache: {kv.bytes_per_token:,} bytes per token, {kv.num_blocks:,} blocks = {kv.num_tokens:,} tokens; "
        f"max concurrency {kv.max_concurrency(n):.2f} at max_model_len {n} ({kv.max_sequences(n)} whole sequences)"
    ]
    if plan.fits:
        lines.append("fits: yes")
    else:
        hint = plan.smallest_fit or "nothing in the catalog's tensor-parallel sizes (1-8) and schemes"
        lines.append(f"fits: NO (not one sequence of {n} tokens); smallest setup that fits: {hint}")
    return "\n".join(lines)


def _performance(plan: Plan) -> str:
    w = plan.config.workload
    b0, bw = plan.compute_bound_batch, plan.compute_bound_batch_workload
    at_short, at_work = _from_batch(b0), _from_batch(bw)
    ctx = w.prompt_len + w.output_len / 2
    r = plan.roofline
    return (
        f"decode turns compute-bound: {at_short} at a short context; {at_work} at the workload's mean context "
        f"{ctx:g}\npredicted decode tokens/s: batch 1 {1 / r.decode_step_s(1, ctx):.1f}, "
        f"batch 32 {32 / r.decode_step_s(32, ctx):.1f}; prefill of {w.prompt_len} tokens "
        f"{r.prefill_s(w.prompt_len) * 1e3:.1f} ms"
    )


def _from_batch(batch: float | None) -> str:
    return "never (memory-bound at every batch)" if batch is None else f"from batch {max(1, math.ceil(batch))}"


def _workload(plan: Plan) -> str:
    w = plan.config.workload
    slos = [
        f"TTFT <= {w.slo_ttft_ms:g} ms" if w.slo_ttft_ms else "",
        f"ITL <= {w.slo_itl_ms:g} ms" if w.slo_itl_ms else "",
    ]
    slo_text = ", ".join(s for s in slos if s) or "none"
    rows = [
        f"workload: prompt {w.prompt_len}, output {w.output_len} tokens (means); SLOs {slo_text}; "
        f"at most {plan.max_concurrency} in flight per replica (KV cache, --max-num-seqs)",
        f"  {'concurrency':>11}{'step ms':>10}{'TTFT ms':>10}{'ITL ms':>9}{'req/s':>9}{'out tok/s':>11}  SLOs",
    ]
    for p in plan.points:
        ok = "ok" if p.meets(w) else "missed"
        rows.append(
            f"  {p.concurrency:>11g}{p.decode_step_ms:>10.2f}{p.ttft_ms:>10.1f}{p.itl_ms:>9.2f}"
            f"{p.requests_per_s:>9.2f}{p.output_tokens_per_s:>11.1f}  {ok}"
        )
    rows.append(_sizing(plan))
    return "\n".join(rows)


def _sizing(plan: Plan) -> str:
    z, w, tp = plan.sizing, plan.config.workload, plan.settings.tensor_parallel_size
    if plan.max_concurrency < 1:
        return "the KV cache holds no request of the workload's length: nothing to serve"
    if z.best is None:
        return "no concurrency meets the SLOs on this setup"
    line = (
        f"best per replica under the SLOs: concurrency {z.best.concurrency:g}, {z.best.requests_per_s:.2f} req/s, "
        f"{z.best.output_tokens_per_s:.0f} output tok/s"
    )
    if z.num_replicas is not None and z.expected is not None:
        target = f"{w.rate:g} req/s" if w.rate is not None else f"concurrency {w.concurrency}"
        e = z.expected
        line += (
            f"\ntarget {target}: {z.num_replicas} replica(s) = {z.num_replicas * tp} {_unit(plan)}; "
            f"expected per replica TTFT {e.ttft_ms:.1f} ms, ITL {e.itl_ms:.2f} ms, "
            f"{e.output_tokens_per_s:.0f} output tok/s"
        )
    if plan.config.num_gpus:
        replicas = plan.config.num_gpus // tp
        line += f"\n{plan.config.num_gpus} {_unit(plan)} on hand = {replicas} replica(s): "
        line += f"{replicas * z.best.requests_per_s:.2f} req/s under the SLOs"
    return line


def _unit(plan: Plan) -> str:
    return "machine(s)" if plan.on_cpu else "GPU(s)"


def plan_to_dict(plan: Plan) -> dict:
    """Everything the table shows, as plain JSON values."""
    m, kv, n = plan.memory, plan.memory.kv, plan.max_model_len
    return {
        "model": dataclasses.asdict(plan.spec),
        "scheme": plan.scheme.name,
        "gpu": dataclasses.asdict(plan.gpu),
        "settings": dataclasses.asdict(plan.settings),
        "efficiency": dataclasses.asdict(plan.efficiency),
        "weights": {
            "groups": [dataclasses.asdict(g) for g in m.stored],
            "stored_bytes": m.stored_bytes,
            "resident_bytes_per_gpu": m.resident_bytes,
            "dequantized_at_load": m.dequantized_at_load,
        },
        "memory": {
            "device_bytes": m.device_bytes,
            "activation_bytes": m.activation_bytes,
            "reserve_bytes": m.reserve_bytes,
            "kv_budget_bytes": m.kv_budget_bytes,
        },
        "kv_cache": {
            "bytes_per_token": kv.bytes_per_token,
            "num_blocks": kv.num_blocks,
            "num_tokens": kv.num_tokens,
            "max_model_len": n,
            "max_concurrency": kv.max_concurrency(n),
            "max_sequences": kv.max_sequences(n),
        },
        "fits": plan.fits,
        "smallest_fit": plan.smallest_fit,
        "compute_bound_batch": plan.compute_bound_batch,
        "compute_bound_batch_workload": plan.compute_bound_batch_workload,
        "workload": dataclasses.asdict(plan.config.workload),
        "max_concurrency": plan.max_concurrency,
        "points": [dataclasses.asdict(p) for p in plan.points],
        "sizing": dataclasses.asdict(plan.sizing),
    }


def write_plot(plan: Plan, path: str) -> None:
    """Output tokens/s and ITL against concurrency: one .svg holding both charts, or an .html page."""
    charts = _charts(plan)
    if path.endswith(".svg"):
        text = _svg_document(charts)
    else:
        title = f"tachyon plan: {plan.spec.name} on {plan.gpu.name}"
        body = "".join(f"<figure>{c}</figure>" for c in charts)
        text = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>\n"
        )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _charts(plan: Plan) -> list[str]:
    w, name = plan.config.workload, f"{plan.scheme.name}, {plan.gpu.name}"
    tput = [(p.concurrency, p.output_tokens_per_s) for p in plan.points]
    itl = [(p.concurrency, p.itl_ms) for p in plan.points]
    labels = [f"concurrency {p.concurrency:g}" for p in plan.points]
    slo = [Threshold(f"ITL SLO {w.slo_itl_ms:g} ms", w.slo_itl_ms)] if w.slo_itl_ms else []
    return [
        line_chart("Output throughput", "concurrency", "tokens/s", [Series(name, tput, color(0), labels=labels)]),
        line_chart("Inter-token latency", "concurrency", "ms", [Series(name, itl, color(1), labels=labels)], slo),
    ]


def _svg_document(charts: list[str]) -> str:
    """Both charts side by side in one standalone SVG, with the report's styles."""
    placed = [c.replace("<svg ", f'<svg x="{i * WIDTH}" ', 1) for i, c in enumerate(charts)]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH * len(charts)}" height="{HEIGHT}">'
        f'<style>{STYLE}</style><rect width="100%" height="100%" fill="white"/>\n' + "\n".join(placed) + "\n</svg>\n"
    )
