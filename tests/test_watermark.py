"""The SDXL invisible watermark against diffusers' StableDiffusionXLWatermarker."""

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion_xl import watermark as diffusers_watermark
from imwatermark import WatermarkDecoder

from turbo_runtime import watermark


def decoded_images(height: int, width: int, colour: bool = True) -> np.ndarray:
    """A deterministic 1x3xHxW float32 image in [-1, 1]: smooth gradients plus some texture.

    With colour=False the three channels are equal (grey): dwtDct hides the bits in the chroma (U) channel, and
    its decoder reads them back reliably only where the chroma is flat, so the decode test uses a grey image.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    luma = 0.6 * (x / width - 0.5) + 0.5 * (y / height - 0.5) + 0.2 * np.sin(x / 23) * np.cos(y / 17)
    if not colour:
        grey = luma + rng.uniform(-0.1, 0.1, size=(height, width))
        return np.clip(np.stack([grey] * 3), -1.0, 1.0).astype(np.float32)[None]
    channels = [
        0.8 * np.sin(x / width * 2 * np.pi) * np.cos(y / height * np.pi),
        1.6 * x / width - 0.8,
        0.7 * np.cos((x + y) / 40.0),
    ]
    texture = rng.uniform(-0.15, 0.15, size=(3, height, width))
    return np.clip(np.stack(channels) + texture, -1.0, 1.0).astype(np.float32)[None]


def to_uint8_bgr(image: np.ndarray) -> np.ndarray:
    """One CHW image in [-1, 1] as the uint8 HWC BGR array OpenCV and imwatermark read."""
    return np.round((image / 2 + 0.5) * 255).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)[:, :, ::-1]


def test_matches_diffusers_and_changes_the_image():
    images = decoded_images(256, 320)
    ours = watermark.apply_watermark(images.copy())
    theirs = diffusers_watermark.StableDiffusionXLWatermarker().apply_watermark(torch.from_numpy(images.copy()))
    assert watermark.available()
    assert ours.shape == images.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs.numpy()).max() <= 1e-6
    assert np.abs(ours - images).max() > 1e-3


def test_message_is_readable_and_is_diffusers_message():
    assert watermark.WATERMARK_BITS == diffusers_watermark.WATERMARK_BITS
    ours = watermark.apply_watermark(decoded_images(256, 320, colour=False))
    bits = WatermarkDecoder("bits", 48).decode(to_uint8_bgr(ours[0]), "dwtDct")
    assert [int(b) for b in bits] == diffusers_watermark.WATERMARK_BITS


def test_narrow_images_are_unchanged():
    images = decoded_images(256, 128)
    np.testing.assert_array_equal(watermark.apply_watermark(images), images)
