"""Capacity planning (`tachyon plan`): memory, KV capacity, roofline latency/throughput and GPU counts for
a model, scheme and GPU, from the model's config alone; `tachyon plan calibrate` fits the roofline to
the real engine on this machine. Uses only public pieces: `tachyon.LLM`, config files, the catalog.

    model_spec -> weights / memory -> roofline -> workload -> planner -> report / cli
"""

from tachyon.plan.planner import Plan, PlanConfig, create_plan

__all__ = ["Plan", "PlanConfig", "create_plan"]
