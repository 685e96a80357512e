"""The invisible watermark that diffusers applies to SDXL outputs.

diffusers' ``StableDiffusionXLWatermarker`` (pipelines/stable_diffusion_xl/watermark.py) hides a fixed 48-bit
message, the one Stability AI's reference scripts use, in every decoded SDXL image with the ``invisible-watermark``
package (``imwatermark``), method "dwtDct": a small change to DCT coefficients of the image's Haar wavelet bands,
invisible to the eye and readable with ``imwatermark.WatermarkDecoder("bits", 48)``. This module does the same to
our decoded images with numpy, in the same arithmetic order, so the result equals diffusers' to float32 rounding.

``invisible-watermark`` is optional: ``pip install "turbo-runtime[watermark]"``. Note that it imports torch.
"""

from __future__ import annotations

import functools

import numpy as np

from turbo_runtime.errors import MissingDependency

# The message diffusers embeds (WATERMARK_MESSAGE in diffusers' watermark.py), most significant bit first.
WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
WATERMARK_BITS = [int(bit) for bit in bin(WATERMARK_MESSAGE)[2:]]
MIN_WIDTH = 256  # diffusers leaves narrower images alone: the encoder cannot embed 48 bits in them


@functools.cache
def available() -> bool:
    """Whether ``imwatermark`` can be imported (tried once, on first call)."""
    try:
        import imwatermark  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _encoder():
    if not available():
        raise MissingDependency('the SDXL watermark needs invisible-watermark: pip install "turbo-runtime[watermark]"')
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    return encoder


def apply_watermark(images: np.ndarray) -> np.ndarray:
    """Watermark decoded images (float32 NCHW RGB in [-1, 1], unclipped) as diffusers does; same layout back.

    Images narrower than 256 px are returned unchanged; like diffusers, imwatermark raises RuntimeError for an image
    under 256x256 px in area that is not narrower. The result is clamped to [-1, 1].
    """
    encoder = _encoder()
    if images.shape[-1] < MIN_WIDTH:
        return images
    # Same steps, in the same order, as StableDiffusionXLWatermarker.apply_watermark: to [0, 255], NHWC, BGR.
    bgr = (255 * (images.astype(np.float32) / 2 + 0.5)).transpose(0, 2, 3, 1)[:, :, :, ::-1]
    rgb = np.array([encoder.encode(image, "dwtDct")[:, :, ::-1] for image in bgr])
    return np.ascontiguousarray(np.clip(2 * (rgb.transpose(0, 3, 1, 2) / 255 - 0.5), -1.0, 1.0))
