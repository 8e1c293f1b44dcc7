"""Model compression algorithms that write compressed-tensors checkpoints; `rtn` is data-free
round-to-nearest. The `tachyon compress` command and users call `compress_model`."""

from tachyon.compress.rtn import compress_model

__all__ = ["compress_model"]
