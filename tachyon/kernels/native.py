"""Build a C++ kernel of this package into a shared library at first use, cache it, load it with ctypes.

The library is compiled for this machine (-march=native) and cached under
`$TACHYON_CACHE_DIR/kernels` (default `~/.cache/tachyon/kernels`), keyed by a hash of the source and
the headers beside it, the compiler's version, the flags and the CPU's feature flags, so an edit, a
new compiler or another CPU builds afresh. The compiler writes to a temporary file that is renamed
into place: concurrent builds (tensor-parallel workers) and interrupted ones never leave a
half-written library. `$TACHYON_CXX` names the compiler (default `g++`). No compiler, or a failed
build, returns None and says why; callers fall back to PyTorch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# the dtypes the native kernels take, as the `bf16` flag each of their entry points reads
DTYPE_FLAGS = {torch.float32: 0, torch.bfloat16: 1}

FLAGS = ["-std=c++17", "-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]


def cache_dir() -> Path:
    root = os.environ.get("TACHYON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tachyon")
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


@functools.cache
def load_native_library(source_name: str, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled `tachyon/kernels/<source_name>`, or None (logged) when it cannot be built here.
    `extra_flags` go after the defaults (tests build the portable paths with e.g. -mno-avx512bf16)."""
    source = Path(__file__).with_name(source_name)
    compiler = os.environ.get("TACHYON_CXX", "g++")
    if shutil.which(compiler) is None:
        logger.warning("no C++ compiler %r on PATH: %s unavailable", compiler, source_name)
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        logger.warning("C++ compiler %r does not run (%s): %s unavailable", compiler, e, source_name)
        return None
    flags = [*FLAGS, *extra_flags]
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]  # what the source may include
    key = "\0".join([source.read_text(), *headers, version, *flags, _cpu_flags()])
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(suffix=".so.partial", dir=target.parent)
        except OSError as e:
            logger.warning("cannot write the kernel cache %s (%s): %s unavailable", target.parent, e, source_name)
            return None
        os.close(fd)
        try:
            build = subprocess.run([compiler, *flags, str(source), "-o", partial], capture_output=True, text=True)
            if build.returncode != 0:
                logger.warning("building %s failed:\n%s", source_name, build.stderr.strip()[-2000:])
                return None
            os.replace(partial, target)
            logger.info("built %s -> %s", source_name, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    try:
        return ctypes.CDLL(str(target))
    except OSError as e:
        logger.warning("cannot load %s (%s): %s unavailable", target, e, source_name)
        return None
