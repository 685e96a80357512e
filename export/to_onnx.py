"""Trace a wrapper to ONNX with static shapes (opset 17), external data for graphs over 2 GB."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from export.rewrites import cpu_friendly
from turbo_runtime.spec import ComponentIO

OPSET = 17
_PROTOBUF_LIMIT = 2**31 - 1


def _constants_to_initializers(model) -> None:
    from onnx import numpy_helper

    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is None:
            continue
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0]))
        graph.node.remove(node)


def export_onnx(
    module: torch.nn.Module, example: tuple, io: ComponentIO, out_dir: Path, precision: str, group_norm: bool = False
) -> list[Path]:
    """Write `out_dir/model.onnx` (+ `model.onnx.data` when large); returns the files written.

    fp16 converts the graph's float tensors to float16 while keeping float32 inputs and outputs, so the
    runtime boundary stays float32 (a graph meant for CUDA; the CPU provider lacks most fp16 kernels).
    int8 quantizes the matrix multiplications dynamically: int8 weights, activations quantized per call by ONNX
    Runtime. Convolutions stay float32 here: ONNX Runtime's dynamic integer convolution (ConvInteger) is slower on
    the CPU than float32; the VAE decoder's are quantized statically once the export has calibrated them
    (export.quantize).
    Plain 2x upsamplers are traced as the convolution of their four output phases (export.rewrites); `group_norm`:
    group norms as OpenVINO's graphs have them too, for a graph that OpenVINO will run.
    """
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".trace-") as tmp:
        traced = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad(), cpu_friendly(module, "onnx", group_norm):
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on static shapes
            torch.onnx.export(
                module,
                example,
                str(traced),
                input_names=[t.name for t in io.inputs],
                output_names=[t.name for t in io.outputs],
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        model = onnx.load(str(traced), load_external_data=True)
    # Constant nodes as initializers: the static quantizer quantizes only stored weights, and the float16
    # converter leaves an initializer in float32 when only blocked ops read it (Resize takes float32 scales).
    _constants_to_initializers(model)
    if precision == "fp16":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        model = convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Resize"]
        )
    path = out_dir / "model.onnx"
    if precision == "int8":
        return _quantize_dynamic(model, path)
    return save_onnx(model, path)


def _too_large_for_one_file(model) -> bool:
    """Weights beyond protobuf's 2 GB limit (with room for the graph) go to external data."""
    return sum(t.ByteSize() for t in model.graph.initializer) > _PROTOBUF_LIMIT - (64 << 20)


def save_onnx(model, path: Path) -> list[Path]:
    import onnx

    if _too_large_for_one_file(model):
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
            size_threshold=1024,
        )
        return [path, path.with_name("model.onnx.data")]
    onnx.save_model(model, str(path))
    return [path]


def _quantize_dynamic(model, path: Path) -> list[Path]:
    """Quantize the float32 graph's matrix multiplications; write the result to `path`, return the files written."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.quantize import onnxruntime_quantizer_quiet

    large = _too_large_for_one_file(model)  # before saving, which moves large weights out of `model`
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".quantize-") as tmp:
        (Path(tmp) / "float").mkdir()
        source = save_onnx(model, Path(tmp) / "float" / "model.onnx")[0]
        quantized = Path(tmp) / "model.onnx"
        with onnxruntime_quantizer_quiet():
            quantize_dynamic(source, quantized, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                             use_external_data_format=large)  # fmt: skip
        return save_onnx(onnx.load(str(quantized), load_external_data=True), path)
