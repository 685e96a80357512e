"""Convert a wrapper to OpenVINO IR (.xml/.bin) with static shapes, optionally with compressed weights."""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from export.rewrites import cpu_friendly
from turbo_runtime.spec import ComponentIO

_AUTO_NAME = re.compile(r"[A-Za-z0-9]+_\d+")


def _stable_names(model, name: str) -> None:
    """Replace names numbered by a process-wide counter, so the same weights give byte-identical IR."""
    model.set_friendly_name(name)
    for i, op in enumerate(model.get_ordered_ops()):
        if _AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")


@contextmanager
def _quiet_converter():
    """OpenVINO's converter prints its arguments whenever "--verbose" is in sys.argv (ours, here)."""
    argv = sys.argv
    sys.argv = [a for a in argv if a != "--verbose"]
    try:
        yield
    finally:
        sys.argv = argv


def export_openvino(module: torch.nn.Module, example: tuple, io: ComponentIO, xml: Path, precision: str) -> list[Path]:
    """Write `xml` and its `.bin`; fp16 stores weights in float16, int8 compresses them to int8 with NNCF (what
    int8-hybrid does to the components it does not quantize in their activations)."""
    import openvino as ov

    types = {"float32": ov.Type.f32, "int64": ov.Type.i64}
    inputs = [(ov.PartialShape(list(t.shape)), types[t.dtype]) for t in io.inputs]
    with warnings.catch_warnings(), torch.no_grad(), _quiet_converter(), cpu_friendly(module, "openvino"):
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=example, input=inputs)
    _name(model, io, xml.stem)
    if precision == "int8":
        import logging

        import nncf

        nncf.set_log_level(logging.ERROR)  # its per-model tables drown the progress bar
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    xml.parent.mkdir(parents=True, exist_ok=True)
    save_ir(model, xml, compress_to_fp16=precision == "fp16")
    return [xml, xml.with_suffix(".bin")]


def ir_from_onnx(onnx_file: Path, io: ComponentIO, xml: Path) -> list[Path]:
    """Write `xml` and its `.bin` converted from the ONNX graph at `onnx_file`, its weights as stored there (a
    quantized graph's int8 ones, with its Q/DQ pairs, which the CPU plugin runs as int8 operations)."""
    import openvino as ov

    with _quiet_converter():
        model = ov.convert_model(str(onnx_file))
    _name(model, io, xml.stem)
    xml.parent.mkdir(parents=True, exist_ok=True)
    save_ir(model, xml, compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


def _name(model, io: ComponentIO, name: str) -> None:
    """Stable operation names, and the manifest's names on the inputs and outputs."""
    _stable_names(model, name)
    for port, spec in zip(model.inputs, io.inputs):
        port.get_tensor().set_names({spec.name})
    for port, spec in zip(model.outputs, io.outputs):
        port.get_tensor().set_names({spec.name})


def save_ir(model, xml: Path, compress_to_fp16: bool) -> None:
    """ov.save_model, with a failed write reported as the OSError it was.

    OpenVINO reports any failed write as "basic_ios::clear: iostream error" and removes the partial files, so
    the disk looks roomy afterwards: compare the room with what it had to write (the weights, and the XML at
    about 500 bytes per operation: 1 KiB is counted)."""
    import openvino as ov

    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    except RuntimeError as e:
        if "iostream error" not in str(e):
            raise
        ops = model.get_ops()
        need = len(ops) << 10
        for op in ops:
            if op.get_type_name() == "Constant":
                size = op.get_byte_size()
                need += size // 2 if compress_to_fp16 and op.get_element_type() == ov.Type.f32 else size
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if shutil.disk_usage(xml.parent).free < need:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(xml.with_suffix(".bin"))) from e
        if limit != resource.RLIM_INFINITY and limit < need:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(xml.with_suffix(".bin"))) from e
        raise
