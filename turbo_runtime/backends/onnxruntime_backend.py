"""ONNX Runtime backend: one InferenceSession per component; CPU by default, CUDA with onnxruntime-gpu, OpenVINO's
CPU plugin with onnxruntime-openvino."""

from __future__ import annotations

import json

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.backends.base import Backend, BackendOptions
from turbo_runtime.cpu import detect as detect_cpu
from turbo_runtime.errors import BackendUnavailable, InputError
from turbo_runtime.files import cache_root

try:
    import onnxruntime as ort
except ImportError:
    raise BackendUnavailable(
        'the onnxruntime backend needs ONNX Runtime: pip install "turbo-runtime[onnxruntime]" '
        '(or "turbo-runtime[onnxruntime-gpu]" for CUDA)'
    ) from None

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
_INSTALL = {
    "CUDAExecutionProvider": 'for CUDA: pip install "turbo-runtime[onnxruntime-gpu]"',
    "OpenVINOExecutionProvider": 'for OpenVINO: pip install "turbo-runtime[onnxruntime-openvino]"',
}
_OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    artifact_format = "onnx"

    def __init__(self, artifacts: Artifacts, options: BackendOptions):
        super().__init__(artifacts, options)
        device = (options.device or "cpu").lower()
        if device not in _PROVIDERS:
            raise InputError(f"unknown onnxruntime device {device!r}; choose from: {', '.join(_PROVIDERS)}")
        provider = _PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{provider} is not available in this onnxruntime build; {_INSTALL[provider]}")
        if options.dtype not in (None, "float32") and device != "openvino":
            raise InputError(
                f"onnxruntime runs the exported graph's precision ({artifacts.precision}); --dtype {options.dtype} "
                "is not applied: export with --precision fp16 for a float16 graph"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if options.threads:
            so.intra_op_num_threads = options.threads
        providers: list = [provider]
        # What the engine computes in, for reports: the exported graph's precision, or OpenVINO's on its provider.
        self.inference_precision = {"fp32": "f32", "fp16": "f16"}.get(artifacts.precision, artifacts.precision)
        if device == "openvino":
            # The provider compiles the graph with OpenVINO's CPU plugin, which it sets to float32; by default ask
            # for what the openvino backend gets: bf16 on CPUs that compute it natively.
            dtype = options.dtype or ("bfloat16" if detect_cpu().has_bf16 else "float32")
            config: dict = {"INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[dtype]}
            self.inference_precision = _OPENVINO_PRECISION[dtype]
            if options.threads:
                config["INFERENCE_NUM_THREADS"] = options.threads
            cache = options.cache_dir or cache_root() / "openvino-ep-cache"
            ep = {"device_type": "CPU", "cache_dir": str(cache), "load_config": json.dumps({"CPU": config})}
            providers = [(provider, ep)]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.device = device
        self._sessions = {
            c: ort.InferenceSession(str(artifacts.component_path(c, "onnx")), so, providers=providers)
            for c in self.components
        }

    def _run(self, component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        io = self.io[component]
        outs = self._sessions[component].run(
            [t.name for t in io.outputs], {t.name: x for t, x in zip(io.inputs, inputs)}
        )
        return [np.asarray(o, dtype=np.float32) for o in outs]
