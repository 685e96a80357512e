"""Backend registry: a name maps to the module and class that implement it, imported on first use."""

from __future__ import annotations

import importlib

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.backends.base import Backend, BackendOptions, Conditioning
from turbo_runtime.errors import InputError

BACKENDS = {
    "torch": ("turbo_runtime.backends.torch_backend", "TorchBackend"),
    "onnxruntime": ("turbo_runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "openvino": ("turbo_runtime.backends.openvino_backend", "OpenVINOBackend"),
}

__all__ = ["BACKENDS", "Backend", "BackendOptions", "Conditioning", "backend_class", "create_backend"]


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def create_backend(name: str, artifacts: Artifacts, options: BackendOptions | None = None) -> Backend:
    """Verify the artifacts the backend reads, then build it (loading and compiling every component)."""
    cls = backend_class(name)
    artifacts.verify(cls.artifact_format)
    return cls(artifacts, options or BackendOptions())
