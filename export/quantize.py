"""Hybrid int8 quantization of the UNet with NNCF, calibrated on what the pipeline itself feeds the UNet.

Matrix multiplications with constant weights (linear layers) get int8 weights; everything else, convolutions
first of all, is quantized in weights and activations, with activation ranges measured on UNet inputs recorded
while turbo-runtime's own loop generates images from a few prompts with the freshly exported float32 UNet.
"""

from __future__ import annotations

import logging
from collections import deque
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


def calibration_inputs(artifacts: Path, samples: int = SAMPLES) -> list[dict[str, np.ndarray]]:
    """UNet inputs, by name, recorded from the pipeline on the calibration prompts (OpenVINO, float32)."""
    from turbo_runtime.pipeline import TurboPipeline

    pipe = TurboPipeline.from_artifacts(artifacts, "openvino", dtype="float32")
    backend, recorded = pipe.backend, []
    run = backend._run

    def record(component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if component == "unet":
            recorded.append({spec.name: x.copy() for spec, x in zip(backend.io["unet"].inputs, inputs)})
        return run(component, inputs)

    backend._run = record
    # Several steps per image, so that late (low-noise) timesteps are calibrated too, as image-to-image uses them.
    steps = 8 if pipe.family.guided else 4
    for seed, prompt in enumerate(CALIBRATION_PROMPTS * 4):
        if len(recorded) >= samples:
            break
        pipe(prompt, num_inference_steps=steps, seed=seed, output_type="latent")
    return recorded[:samples]


def _has_constant_weight(op) -> bool:
    """A MatMul one of whose inputs is a constant (through converts and reshapes): a linear layer."""
    for port in range(2):
        queue = deque([op.input_value(port).get_node()])
        while queue:
            node = queue.popleft()
            if node.get_type_name() == "Constant":
                return True
            if node.get_type_name() in ("Convert", "Reshape", "FakeQuantize") and node.inputs():
                queue.append(node.input_value(0).get_node())
    return False


def quantize_unet(xml: Path, dataset: list[dict[str, np.ndarray]]) -> None:
    """Rewrite the UNet IR at `xml` (and its .bin) hybrid-quantized."""
    import nncf
    import openvino as ov

    from export.to_openvino import save_ir

    nncf.set_log_level(logging.ERROR)
    model = ov.Core().read_model(xml)
    linear = [
        op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul" and _has_constant_weight(op)
    ]
    model = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=nncf.IgnoredScope(types=["Convolution"])
    )
    model = nncf.quantize(
        model,
        nncf.Dataset(dataset),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(dataset),
        ignored_scope=nncf.IgnoredScope(names=linear),
        advanced_parameters=nncf.AdvancedQuantizationParameters(  # SmoothQuant off, as optimum-intel does for SD
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        ),
    )
    tmp = xml.with_name(xml.stem + ".quantized.xml")
    save_ir(model, tmp, compress_to_fp16=False)
    tmp.replace(xml)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
