"""What machine a measurement ran on, for reports that must say so (`tachyon validate`, `tachyon plan
calibrate`)."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's marketing name where Linux tells it (platform.processor() is often empty or just x86_64)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
