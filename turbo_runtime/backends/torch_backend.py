"""PyTorch backend: the very wrapper modules the export traced, loaded from the artifacts' source model."""

from __future__ import annotations

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.backends.base import Backend, BackendOptions
from turbo_runtime.errors import ArtifactError, BackendUnavailable, InputError

try:
    import torch

    from export.sources import resolve
    from export.wrappers import load_model
except ImportError:
    raise BackendUnavailable(
        'the torch backend needs PyTorch and diffusers: pip install "turbo-runtime[torch]"'
    ) from None

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TorchBackend(Backend):
    name = "torch"
    artifact_format = None

    def __init__(self, artifacts: Artifacts, options: BackendOptions):
        super().__init__(artifacts, options)
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("--device cuda was asked for but this torch build sees no CUDA device")
        dtype = options.dtype or "float32"
        if dtype == "float16" and not device.startswith("cuda"):
            raise InputError("float16 runs only on CUDA with the torch backend; use bfloat16 or float32 on the CPU")
        if options.threads:
            torch.set_num_threads(options.threads)
        sources = {"model": resolve(artifacts.model_id)}
        if artifacts.manifest.get("vae"):
            sources["vae"] = resolve(artifacts.manifest["vae"]["id"], vae=True)
        for key, source in sources.items():
            if source.source_hash != artifacts.manifest[key]["source_hash"]:
                raise ArtifactError(
                    f"the model files of {source.model_id} changed since {artifacts.root} was exported; export again"
                )
        source, vae = sources["model"], sources.get("vae")
        self.device = device
        self.inference_precision = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[dtype]
        self.unet_batches = (1, 2)  # dynamic shapes: guidance runs both branches in one call, as diffusers does
        self._dtypes = {c: torch.float32 if dtype == "float16" and self.upcast(c) else _DTYPES[dtype] for c in self.io}
        vae_path = vae.path if vae else None
        modules = load_model(source.path, self.family, source.variant, vae_path=vae_path).modules  # f32, CPU
        self._modules = {c: m for c, m in modules.items() if c in self.components}
        for component, module in self._modules.items():
            module.to(device=device, dtype=self._dtypes[component])

    def _run(self, component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        dtype = self._dtypes[component]
        tensors = [
            torch.from_numpy(x).to(device=self.device, dtype=dtype if x.dtype == np.float32 else None) for x in inputs
        ]
        with torch.inference_mode():
            out = self._modules[component](*tensors)
        outs = out if isinstance(out, tuple) else (out,)
        return [o.float().cpu().numpy() for o in outs]
