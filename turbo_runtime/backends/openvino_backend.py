"""OpenVINO backend: static-shape IR, compiled once per component, compile cache on by default."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.backends.base import Backend, BackendOptions
from turbo_runtime.errors import BackendUnavailable
from turbo_runtime.files import cache_root, checked_cache, keep_days, prune_cache, releasing_mappings

try:
    import openvino as ov
except ImportError:
    raise BackendUnavailable('the openvino backend needs OpenVINO: pip install "turbo-runtime[openvino]"') from None

_PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


class OpenVINOBackend(Backend):
    name = "openvino"
    artifact_format = "openvino"

    def __init__(self, artifacts: Artifacts, options: BackendOptions):
        super().__init__(artifacts, options)
        core = ov.Core()
        device = options.device or "CPU"
        available = core.available_devices
        if device.split(":")[0] not in ("AUTO", "MULTI", "HETERO", "BATCH") and device not in available:
            raise BackendUnavailable(
                f"OpenVINO device {device!r} is not available here; available: {', '.join(available)}"
            )
        cache_dir = Path(options.cache_dir or cache_root() / "openvino-cache")
        keep = keep_days()
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if options.dtype:  # otherwise the plugin's best: bf16 on CPUs with AMX/AVX512-BF16, f32 elsewhere
            config["INFERENCE_PRECISION_HINT"] = _PRECISION_HINTS[options.dtype]
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        self.device = device
        self._requests = {}
        files = {c: artifacts.component_files(c, "openvino") for c in self.components}
        # Largest first, and the weights' file pages (IR or cached blob) released as the plugin reads them: it
        # keeps the mapping although it computes from its own copy, which would count the weights twice, and
        # compiling the UNet beside the others' copies would raise the peak further.
        # A first start hashes each new cache entry beside the next compile (the UNet's 1 GB blob: 0.8 s).
        mapped = [artifacts.root, cache_dir] if device == "CPU" else []
        with ThreadPoolExecutor(1, thread_name_prefix="cache-records") as recorder:
            for component in sorted(files, key=lambda c: -artifacts.component_bytes(c, "openvino")):
                own = config
                if config.get("INFERENCE_PRECISION_HINT") == "f16" and self.upcast(component):
                    own = {**config, "INFERENCE_PRECISION_HINT": "f32"}
                folder = self.cache_folder(cache_dir, component)
                with checked_cache(folder, recorder) as cache, releasing_mappings(mapped):
                    compiled = core.compile_model(str(files[component][0]), device, {**own, "CACHE_DIR": str(cache)})
                self._requests[component] = compiled.create_infer_request()
        prune_cache(cache_dir, keep)
        # What the plugin chose, for reports: bf16 on CPUs with AMX or AVX512-BF16 unless --dtype says otherwise.
        hint = self._requests["unet"].get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.to_string() if isinstance(hint, ov.Type) else str(hint)

    def _run(self, component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        request = self._requests[component]
        request.infer({spec.name: x for spec, x in zip(self.io[component].inputs, inputs)}, share_inputs=True)
        return [np.array(request.get_tensor(spec.name).data, dtype=np.float32) for spec in self.io[component].outputs]

    def _release(self, component: str) -> None:
        del self._requests[component]  # the request holds the only reference to its compiled model
