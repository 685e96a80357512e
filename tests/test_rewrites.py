"""The export's CPU-friendly rewrites compute what the layers they replace compute, and change the traced graph."""

import numpy as np
import pytest
import torch
from diffusers.models.upsampling import Upsample2D
from torch import nn

from export.rewrites import cpu_friendly


def _layers() -> nn.Sequential:
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    return nn.Sequential(norm, nn.SiLU(), Upsample2D(16, use_conv=True, out_channels=12)).eval()


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 16, 8, 8)])
def test_rewritten_layers_equal_the_originals(shape, fmt):
    layers = _layers()
    x = torch.randn(shape) * 3 + 1  # a mean far from zero: the variance is taken around the group mean
    with torch.no_grad():
        expected = layers(x)
        with cpu_friendly(layers, fmt):
            rewritten = layers(x)
        after = layers(x)
    assert rewritten.shape == expected.shape == (shape[0], 12, 2 * shape[2], 2 * shape[3])
    assert (rewritten - expected).abs().max() < 1e-4 * expected.abs().max()
    assert torch.equal(after, expected)  # the module is left as it was
    assert not any("forward" in vars(m) for m in layers.modules())
    assert not dict(layers.named_buffers(prefix="", recurse=True))


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_group_norm_on_sequences_and_an_upsampler_with_output_size(fmt):
    torch.manual_seed(1)
    norm, up = nn.GroupNorm(2, 8), Upsample2D(8, use_conv=True)
    x, image = torch.randn(3, 8, 20), torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        expected = norm(x), up(image, output_size=(11, 11)), up(image, output_size=(10, 10))
        with cpu_friendly(nn.ModuleList([norm, up]), fmt):
            got = norm(x), up(image, output_size=(11, 11)), up(image, output_size=(10, 10))
    for a, b in zip(got, expected):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-5


def test_openvino_graph_has_no_group_norm_and_a_transposed_convolution(tmp_path):
    ov = pytest.importorskip("openvino")
    from export.to_openvino import export_openvino
    from turbo_runtime.spec import ComponentIO, TensorSpec

    layers = _layers()
    x = torch.randn(1, 16, 8, 8)
    io = ComponentIO(
        (TensorSpec("sample", (1, 16, 8, 8), "float32"),), (TensorSpec("out", (1, 12, 16, 16), "float32"),)
    )
    xml = export_openvino(layers, (x,), io, tmp_path / "layers.xml", "fp32")[0]
    model = ov.Core().read_model(xml)
    types = {op.get_type_name() for op in model.get_ops()}
    assert "GroupNormalization" not in types and "MVN" not in types and "Interpolate" not in types
    assert "ConvolutionBackpropData" in types
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    with torch.no_grad():
        expected = layers(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy())[0], expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("group_norm", [False, True])
def test_onnx_graph_upsamples_by_its_four_phases_and_keeps_its_group_norm_unless_told(tmp_path, group_norm):
    """The ONNX graph keeps the framework's group norm, which ONNX Runtime fuses; one for OpenVINO (its int8 VAE
    decoder) computes it from per-channel statistics, as OpenVINO's own graphs do."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from export.to_onnx import export_onnx
    from turbo_runtime.spec import ComponentIO, TensorSpec

    layers = _layers()
    nn.init.normal_(layers[2].conv.bias)
    x = torch.randn(1, 16, 8, 8)
    io = ComponentIO(
        (TensorSpec("sample", (1, 16, 8, 8), "float32"),), (TensorSpec("out", (1, 12, 16, 16), "float32"),)
    )
    path = export_onnx(layers, (x,), io, tmp_path, "fp32", group_norm=group_norm)[0]
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert "Resize" not in ops and "Upsample" not in ops and "ConvTranspose" not in ops
    assert ops.count("Conv") == 1 and "DepthToSpace" in ops
    assert ("InstanceNormalization" in ops) != group_norm
    # Its weights and bias are stored, not computed (a static quantizer takes only stored ones)
    conv = next(node for node in graph.node if node.op_type == "Conv")
    assert set(conv.input[1:]) <= {t.name for t in graph.initializer}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = layers(x).numpy()
    np.testing.assert_allclose(
        session.run(None, {"sample": x.numpy()})[0], expected, atol=1e-5 * np.abs(expected).max()
    )
