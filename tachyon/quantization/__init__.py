"""Weight quantization: preset schemes, the pure quantize / pack math, and the compressed-tensors checkpoint
format. `tachyon.compress` writes checkpoints with it; the engine's quantized linear methods read them."""

from tachyon.quantization.compressed_tensors import compress_weight, decompress, quantization_config
from tachyon.quantization.schemes import PRESET_SCHEMES, QuantArgs, QuantScheme, create_scheme, supported_schemes

__all__ = [
    "PRESET_SCHEMES",
    "QuantArgs",
    "QuantScheme",
    "compress_weight",
    "create_scheme",
    "decompress",
    "quantization_config",
    "supported_schemes",
]
