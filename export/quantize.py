"""int8 quantization calibrated on what the pipeline itself feeds each component: NNCF for OpenVINO's int8-hybrid,
ONNX Runtime's static quantization for the VAE decoder of the int8 ONNX graphs.

int8-hybrid: every convolution and linear layer of the UNet (attention's projections included; attention's own
products stay in the plugin's fused kernel) computes in int8, weights and activations, with activation ranges
measured on UNet inputs recorded while turbo-runtime's own loop generates images from a few prompts with the freshly
exported float32 artifacts. The linear layers' activations are smoothed first (SmoothQuant, NNCF's default for
transformers): per-channel outliers moved into the weights.
The text encoders are quantized the same way on the prompts' tokens, and a tiny VAE's decoder (all convolutions)
on the latents the loop hands it.

int8 (ONNX and OpenVINO): the VAE decoder's convolutions compute in int8 (int8 weights per output channel, uint8
activations with ranges calibrated on the latents the int8 pipeline hands the decoder), except its first two and
its last (`post_quant_conv`, `conv_in`, `conv_out`), which stay float32: the last alone held most of the drift
(sd-turbo-arch, benchmarks/README.md). ONNX Runtime's quantizer writes the graph, with quantize/dequantize pairs
that ONNX Runtime fuses into QLinearConv and that OpenVINO converts into its own int8 convolutions: NNCF's int8
decoder drifted further (37.5-39.0 dB against 40.9). The data movements of the upsamplers' four phases (sliced,
stacked and interleaved between one convolution and the next) are quantized too, on the convolutions' own scales:
ONNX Runtime then moves uint8 instead of float32 there (the decoder's peak 0.9 GiB instead of 1.3 at 512x512, 8 %
faster, the same pixels).
"""

from __future__ import annotations

import contextlib
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


def calibration_inputs(
    artifacts: Path,
    components: tuple[str, ...],
    backend: str = "openvino",
    samples: int = SAMPLES,
    progress: bool = False,
) -> dict[str, list]:
    """Inputs by name of each of `components`, recorded from the pipeline on the calibration prompts (`backend`,
    float32 arithmetic on the artifacts as written so far): up to `samples` UNet calls when the UNet is one of
    them, else one image per prompt; one text encoder and one decoder call per image. `progress`: a progress bar
    on stderr."""
    # A cache of its own, gone afterwards: the engines key their entries by the artifacts' path, here the export's
    # temporary folder, so entries in the shared cache would never be used again (5 GB for SD-Turbo).
    with tempfile.TemporaryDirectory(dir=artifacts, prefix=".compile-cache-") as cache:
        return _record(artifacts, components, backend, samples, Path(cache), progress)


def _record(
    artifacts: Path, components: tuple[str, ...], engine: str, samples: int, cache: Path, progress: bool
) -> dict[str, list]:
    from tqdm import tqdm

    from turbo_runtime.pipeline import TurboPipeline

    pipe = TurboPipeline.from_artifacts(artifacts, engine, dtype="float32", vae_encoder=False, cache_dir=cache)
    backend, recorded = pipe.backend, {c: [] for c in components}
    run = backend._run
    # Several steps per image, so that late (low-noise) timesteps are calibrated too, as image-to-image uses them.
    steps = 8 if pipe.family.guided else 4
    output = "np" if "vae_decoder" in components else "latent"
    prompts = CALIBRATION_PROMPTS * 4 if "unet" in components else CALIBRATION_PROMPTS
    lead = "unet" if "unet" in components else components[0]  # what the progress bar counts
    bar = tqdm(total=samples if lead == "unet" else len(prompts), desc=f"calibration: {lead}", unit="call",
               disable=not progress, leave=False)  # fmt: skip

    def record(component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        io = backend.io[component]
        if component in recorded:
            recorded[component].append({spec.name: x.copy() for spec, x in zip(io.inputs, inputs)})
            bar.update(component == lead)
        if component == "vae_decoder":  # the last call of an image: its output is not needed
            return [np.zeros(spec.shape, np.float32) for spec in io.outputs]
        return run(component, inputs)

    backend._run = record
    with bar:
        for seed, prompt in enumerate(prompts):
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


@contextlib.contextmanager
def onnxruntime_quantizer_quiet():
    """ONNX Runtime's quantizer logs advice and a line per tensor on the root logger: keep them out of the export's
    output while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# The VAE decoder's convolutions left in float32 by quantize_onnx_decoder (names as torch.onnx traces them).
ONNX_DECODER_FLOAT = ("/post_quant_conv/Conv", "/decoder/conv_in/Conv", "/decoder/conv_out/Conv")
# The data movements the upsamplers' phases go through, quantized by quantize_onnx_decoder beside the convolutions.
PHASE_MOVES = ("Slice", "Unsqueeze", "Concat", "Reshape", "DepthToSpace")


def quantize_onnx_decoder(path: Path, dataset: list[dict[str, np.ndarray]]) -> list[Path]:
    """Rewrite the float32 VAE decoder graph at `path` (a .onnx file, alone in its folder with its external data)
    with its convolutions in int8, calibrated on `dataset` (see the module's docstring); returns the files
    written."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from export.to_onnx import save_onnx

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(dataset))

        def set_range(self, start_index: int, end_index: int):
            self.items = iter(dataset[start_index:end_index])

        def get_next(self):
            return next(self.items, None)

        def __len__(self):
            return len(dataset)

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    convs = {n.name for n in nodes if n.op_type == "Conv"}
    # The upsamplers' moves only: calibration holds every quantized tensor of a call at once, and the group norms'
    # reshapes, which ONNX Runtime would run the same either way, added 4 GB of them at 512x512.
    moves = {n.name for n in nodes if n.op_type in PHASE_MOVES and "/upsamplers." in n.name}
    missing = [n for n in ONNX_DECODER_FLOAT if n not in convs]
    if missing:
        raise RuntimeError(f"the VAE decoder graph has no convolution named {missing[0]!r}")
    with tempfile.TemporaryDirectory(dir=path.parent.parent, prefix=".quantize-") as tmp:
        out = Path(tmp) / "model.onnx"
        with onnxruntime_quantizer_quiet():
            quantize_static(
                path,
                out,
                Reader(),
                quant_format=QuantFormat.QDQ,  # ONNX Runtime fuses each DequantizeLinear-Conv-QuantizeLinear
                op_types_to_quantize=["Conv", *PHASE_MOVES],
                nodes_to_quantize=sorted(convs | moves),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(ONNX_DECODER_FLOAT),
                calibrate_method=CalibrationMethod.MinMax,
                # One calibration call at a time: the decoder's activations of all of them at once would not fit.
                extra_options={"CalibStridedMinMax": 1},
            )
        graph = onnx.load(str(out), load_external_data=True)
    for old in path.parent.iterdir():
        old.unlink()
    return save_onnx(graph, path)
