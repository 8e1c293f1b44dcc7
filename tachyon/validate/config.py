"""What one `tachyon validate` run does, validated where it is built (`ValidateConfig`), and the two facts
about the model it needs before any work: the group size its layer widths allow, and the engine flags
that reproduce its engine settings on other commands' command lines.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from tachyon.config import EngineConfig
from tachyon.quantization.schemes import create_scheme

DEFAULT_SCHEMES = ("W8A8", "W4A16")  # int8 matmuls (speed) and 4-bit weights (size)
DEFAULT_TASKS = ("lee", "lee_cloze")
GROUP_SIZES = (128, 64, 32, 16)  # tried in order: compressed-tensors' default first


@dataclass(frozen=True)
class Workload:
    """The request shape of both performance measurements: offline throughput and the server load run."""

    num_prompts: int = 16  # offline: prompts in one LLM.generate call
    prompt_tokens: int = 128
    output_tokens: int = 32  # generated in full (ignore_eos)
    concurrency: tuple[int, ...] = (1, 4)  # server: one benchmark per level; the first is the latency view
    bench_requests: int = 8  # server: requests per level

    def __post_init__(self) -> None:
        for flag, value in (
            ("--num-prompts", self.num_prompts),
            ("--prompt-tokens", self.prompt_tokens),
            ("--output-tokens", self.output_tokens),
            ("--bench-requests", self.bench_requests),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"--concurrency needs levels of at least 1, got {list(self.concurrency)}")


@dataclass(frozen=True)
class ValidateConfig:
    model: str | None  # None: the default model
    output: str  # report folder, created atomically
    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    tasks: tuple[str, ...] = DEFAULT_TASKS
    limit: int | None = None  # first N docs of each task
    window: int | None = None  # perplexity window (tachyon eval's default when None)
    stride: int | None = None
    group_size: int | None = None  # grouped schemes; None: the largest of GROUP_SIZES the widths allow
    min_recovery: float = 95.0  # percent a scheme must keep to be recommended
    workload: Workload = field(default_factory=Workload)
    engine: EngineConfig = field(default_factory=EngineConfig)
    engine_flags: tuple[str, ...] = ()  # the engine flags as typed, for `tachyon serve` and the commands
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.schemes:
            raise ValueError("--schemes names no scheme")
        # canonical names; an unknown one fails here, before any work
        object.__setattr__(self, "schemes", tuple(create_scheme(s).name for s in self.schemes))
        if len(set(self.schemes)) != len(self.schemes):
            raise ValueError(f"--schemes repeats a scheme: {','.join(self.schemes)}")
        if os.path.exists(self.output) and not self.overwrite:
            raise ValueError(f"--output {self.output} exists; pass --overwrite to replace it")
        if not 0 < self.min_recovery <= 100:
            raise ValueError(f"--min-recovery must be a percentage in (0, 100], got {self.min_recovery}")


def pick_group_size(hf_config, requested: int | None) -> int:
    """`requested` if given, else the largest of GROUP_SIZES that divides every Linear's input width
    (SmolLM2's 576 rules out the usual 128, so 64)."""
    if requested is not None:
        return requested
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    widths = (hf_config.hidden_size, hf_config.num_attention_heads * head_dim, hf_config.intermediate_size)
    for size in GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    return -1  # per output channel


def engine_flags(config: EngineConfig, defaults: EngineConfig) -> list[str]:
    """The flags that turn `defaults` into `config` (model excluded), spelled as `add_engine_args` does."""
    flags: list[str] = []
    for f in dataclasses.fields(EngineConfig):
        value = getattr(config, f.name)
        if f.name == "model" or value == getattr(defaults, f.name):
            continue
        name = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else f"--no-{name[2:]}")
        else:
            flags += [name, str(value)]
    return flags
