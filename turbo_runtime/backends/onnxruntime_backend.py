"""ONNX Runtime backend: one InferenceSession per component, CPU by default, CUDA with onnxruntime-gpu."""

from __future__ import annotations

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.backends.base import Backend, BackendOptions
from turbo_runtime.errors import BackendUnavailable, InputError

try:
    import onnxruntime as ort
except ImportError:
    raise BackendUnavailable(
        'the onnxruntime backend needs ONNX Runtime: pip install "turbo-runtime[onnxruntime]" '
        '(or "turbo-runtime[onnxruntime-gpu]" for CUDA)'
    ) from None

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


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
            raise BackendUnavailable(
                f"{provider} is not available in this onnxruntime build; for CUDA: "
                'pip install "turbo-runtime[onnxruntime-gpu]"'
            )
        if options.dtype not in (None, "float32"):
            raise InputError(
                f"onnxruntime runs the exported graph's precision ({artifacts.precision}); --dtype {options.dtype} "
                "is not applied: export with --precision fp16 for a float16 graph"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if options.threads:
            so.intra_op_num_threads = options.threads
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self.device = device
        self._sessions = {
            c: ort.InferenceSession(str(artifacts.component_path(c, "onnx")), so, providers=providers)
            for c in self.family.components
        }

    def _run(self, component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        io = self.io[component]
        outs = self._sessions[component].run(
            [t.name for t in io.outputs], {t.name: x for t, x in zip(io.inputs, inputs)}
        )
        return [np.asarray(o, dtype=np.float32) for o in outs]
