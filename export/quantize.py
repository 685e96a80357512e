"""int8 quantization with NNCF, calibrated on what the pipeline itself feeds each component.

Every convolution and linear layer of the UNet (attention's projections included; attention's own products stay
in the plugin's fused kernel) computes in int8, weights and activations, with activation ranges measured on UNet
inputs recorded while turbo-runtime's own loop generates images from a few prompts with the freshly exported
float32 artifacts. The linear layers' activations are smoothed first (SmoothQuant, NNCF's default for
transformers): per-channel outliers moved into the weights.
The text encoders are quantized the same way on the prompts' tokens, and a tiny VAE's decoder (all convolutions)
on the latents the loop hands it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

# Varied subjects and styles, so the activation ranges are not those of one picture.
CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red fox in the snow, golden hour",
    "an oil painting of a harbour at night",
    "a bowl of ramen, studio lighting, top view",
    "a watercolour of a mountain village in spring",
    "a close-up portrait of an old fisherman",
    "a futuristic city skyline in the rain, neon",
    "a cat sleeping on a pile of books",
)
SAMPLES = 32  # UNet calls recorded for calibration


def calibration_inputs(artifacts: Path, components: tuple[str, ...], samples: int = SAMPLES) -> dict[str, list]:
    """Inputs by name of each of `components`, recorded from the pipeline on the calibration prompts (OpenVINO,
    float32): up to `samples` UNet calls, one text encoder and one decoder call per image."""
    # A compile cache of its own, gone afterwards: OpenVINO keys its entries by the IR's path, here the export's
    # temporary folder, so entries in the shared cache would never be used again (5 GB for SD-Turbo).
    with tempfile.TemporaryDirectory(dir=artifacts, prefix=".compile-cache-") as cache:
        return _record(artifacts, components, samples, Path(cache))


def _record(artifacts: Path, components: tuple[str, ...], samples: int, cache: Path) -> dict[str, list]:
    from turbo_runtime.pipeline import TurboPipeline

    pipe = TurboPipeline.from_artifacts(artifacts, "openvino", dtype="float32", vae_encoder=False, cache_dir=cache)
    backend, recorded = pipe.backend, {c: [] for c in components}
    run = backend._run

    def record(component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if component in recorded:
            recorded[component].append({spec.name: x.copy() for spec, x in zip(backend.io[component].inputs, inputs)})
        return run(component, inputs)

    backend._run = record
    # Several steps per image, so that late (low-noise) timesteps are calibrated too, as image-to-image uses them.
    steps = 8 if pipe.family.guided else 4
    output = "np" if "vae_decoder" in components else "latent"
    for seed, prompt in enumerate(CALIBRATION_PROMPTS * 4):
        if len(recorded.get("unet", ())) >= samples:
            break
        pipe(prompt, num_inference_steps=steps, seed=seed, output_type=output)
    return {c: inputs[:samples] for c, inputs in recorded.items()}


def quantized_model(model, dataset: list[dict[str, np.ndarray]], transformer: bool):
    """`model` (an ov.Model) with int8 weights and activations calibrated on `dataset`: as a transformer
    (SmoothQuant, attention-aware patterns) for the text encoders and the UNet, else as a convolutional network.

    Lookup tables (a text encoder's token and position embeddings) stay out of it: a Gather computes nothing, and
    in a quantized model OpenVINO's CPU plugin folds an int8 table back into float32 when it compiles (four times
    the int8 bytes, resident for good); they are stored as float16 instead, which it keeps as they are."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(dataset),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        subset_size=len(dataset),
        ignored_scope=nncf.IgnoredScope(types=["Gather"], validate=False),
    )
    _tables_in_float16(quantized)
    return quantized


def _tables_in_float16(model) -> None:
    """Store each float32 constant that only a Gather reads as float16 with a Convert back."""
    import openvino as ov
    import openvino.opset13 as ops

    for node in model.get_ordered_ops():
        if node.get_type_name() != "Gather":
            continue
        table = node.input_value(0)
        if table.get_node().get_type_name() != "Constant" or table.get_element_type() != ov.Type.f32:
            continue
        if any(t.get_node().get_type_name() != "Gather" for t in table.get_target_inputs()):
            continue  # read by something else too
        values = table.get_node().get_data()
        table.replace(ops.convert(ops.constant(values.astype(np.float16)), ov.Type.f32).output(0))


def quantize(xml: Path, dataset: list[dict[str, np.ndarray]], transformer: bool) -> None:
    """Rewrite the IR at `xml` (and its .bin) quantized (see `quantized_model`)."""
    import openvino as ov

    from export.to_openvino import save_ir

    model = quantized_model(ov.Core().read_model(xml), dataset, transformer)
    tmp = xml.with_name(xml.stem + ".quantized.xml")
    save_ir(model, tmp, compress_to_fp16=False)
    tmp.replace(xml)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
