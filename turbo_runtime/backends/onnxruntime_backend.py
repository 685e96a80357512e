"""ONNX Runtime backend: one InferenceSession per component; CPU by default, CUDA with onnxruntime-gpu, OpenVINO's
CPU plugin with onnxruntime-openvino.

On the CPU provider each component's optimized graph is saved once in the cache folder and loaded from there at
later starts, so a start does not optimize the graphs again (`onnxruntime-cache`, every entry checked against its
sha256 like OpenVINO's compile cache).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.backends.base import Backend, BackendOptions
from turbo_runtime.cpu import detect as detect_cpu
from turbo_runtime.errors import BackendUnavailable, InputError
from turbo_runtime.files import (
    cache_root,
    checked_cache,
    clear_cache_folder,
    keep_days,
    prune_cache,
    write_text_atomic,
)

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

log = logging.getLogger(__name__)

# The saved graph holds every rewrite ONNX Runtime makes (ORT_ENABLE_ALL), the layout ones included: those reorder
# the convolution weights into NCHWc blocks sized for the instruction set of the CPU they ran on, so ONNX Runtime
# documents such a graph for "compatible hardware" only; the CPU's flags are part of the cache key, so another CPU
# never loads it. Saving only the portable levels (ORT_ENABLE_EXTENDED) and applying the layout rewrites at each
# load was measured: the UNet of sd-turbo took 6.8 s to load instead of 1.2 s, as reordering its weights is most of
# the work. The saved graph is loaded with the optimizations off, as the documentation advises: none are left.
_SAVED_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
_LOAD_LEVEL = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
_SAVED_MODEL, _SAVED_DATA, _RECORD = "model.onnx", "model.data", "optimized.json"
# Weights of at least this size go to the external data file, aligned so that ONNX Runtime maps them from it.
_EXTERNAL_MIN_BYTES = 1024
_CACHE_FORMAT = 1  # bump when what the cache folder holds changes
# Components whose weights ONNX Runtime does not pre-pack at load: measured on sd-turbo's UNet (2 threads), its
# step took the same time either way (its matrix products have 4096 rows, so packing per call is amortized) while
# pre-packing took 1.2 s of its 1.2 s load. The text encoder (77 rows) ran 30 % slower without: it keeps them.
_NO_PREPACKING = ("unet",)


def _session_options(level: ort.GraphOptimizationLevel, threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    # The saved optimized graph's node order, run as it lies, held the int8 VAE decoder's float32 group norm
    # activations at its largest stage longer: 1.1 GiB at its peak against 0.9 when ordered by priority.
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return so


def optimized_graph_settings(provider: str) -> dict:
    """What decides the optimized graph besides the source graph: the engine's version, the provider and the level
    its rewrites were applied at, and the CPU (the fused kernels it picked). A cache entry made under other
    settings is never used: they name its folder (Backend.cache_folder)."""
    cpu = detect_cpu()
    return {
        "format": _CACHE_FORMAT,
        "onnxruntime": ort.__version__,
        "provider": provider,
        "saved_level": str(_SAVED_LEVEL),
        "external_min_bytes": _EXTERNAL_MIN_BYTES,
        "cpu_class": cpu.name,
        "cpu_flags": list(cpu.flags),
    }


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
        if provider == "CPUExecutionProvider":
            cache_dir = Path(options.cache_dir or cache_root() / "onnxruntime-cache")
            keep = keep_days()
            # Largest first: a first start hashes each saved graph while it optimizes the next one.
            largest_first = sorted(self.components, key=lambda c: -artifacts.component_bytes(c, "onnx"))
            with ThreadPoolExecutor(1, thread_name_prefix="cache-records") as recorder:
                self._sessions = {c: self._cpu_session(c, cache_dir, recorder) for c in largest_first}
            prune_cache(cache_dir, keep)
        else:
            so = _session_options(_SAVED_LEVEL, options.threads)
            self._sessions = {
                c: ort.InferenceSession(str(artifacts.component_path(c, "onnx")), so, providers=providers)
                for c in self.components
            }

    def _cpu_session(self, component: str, cache_dir: Path, recorder: Executor) -> ort.InferenceSession:
        """The component's session on the CPU provider, from its optimized graph in the cache, saved first if the
        cache has none (or one that fails its sha256 check: files.checked_cache removes it first)."""
        settings = optimized_graph_settings("CPUExecutionProvider")
        folder = self.cache_folder(cache_dir, component, json.dumps(settings, sort_keys=True))
        with checked_cache(folder, recorder) as cache:
            if not _complete(cache, settings):
                self._save_optimized(component, cache, settings)
            so = _session_options(_LOAD_LEVEL, self.options.threads)
            # No arena: each session's arena kept its largest call's buffers for good, so the process held the
            # UNet's and the VAE decoder's at once (sd-turbo: peak 6.65 GiB against 5.55 GiB without). The price:
            # fresh pages for the activations at every call, about 0.3 s of the VAE decoder's 6 s.
            so.enable_cpu_mem_arena = False
            if component in _NO_PREPACKING:
                so.add_session_config_entry("session.disable_prepacking", "1")
            try:
                return ort.InferenceSession(str(cache / _SAVED_MODEL), so, providers=["CPUExecutionProvider"])
            except Exception as e:  # sha256-checked, so written wrong rather than changed since: write it again
                log.warning("saved optimized graph in %s does not load (%s); optimizing again", cache, e)
                self._save_optimized(component, cache, settings)
                return ort.InferenceSession(str(cache / _SAVED_MODEL), so, providers=["CPUExecutionProvider"])

    def _save_optimized(self, component: str, cache: Path, settings: dict) -> None:
        """Optimize the component's graph at the saved level and write it into `cache`, the record last. ONNX
        Runtime writes into a hidden folder beside, whose files are then moved in: a reader under the cache's
        lock never sees half a graph, and a writer that dies leaves no record, so its files are removed."""
        clear_cache_folder(cache)
        source = self.artifacts.component_path(component, "onnx")
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            so = _session_options(_SAVED_LEVEL, self.options.threads)
            so.optimized_model_filepath = str(Path(tmp) / _SAVED_MODEL)
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", _SAVED_DATA)
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES)
            )
            so.add_session_config_entry("session.disable_prepacking", "1")  # this session only writes the graph
            ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
            files = sorted(p.name for p in Path(tmp).iterdir())
            for name in files:
                os.replace(Path(tmp) / name, cache / name)
        write_text_atomic(cache / _RECORD, json.dumps({**settings, "files": files}, indent=1, sort_keys=True))

    def _run(self, component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        io = self.io[component]
        outs = self._sessions[component].run(
            [t.name for t in io.outputs], {t.name: x for t, x in zip(io.inputs, inputs)}
        )
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def _release(self, component: str) -> None:
        del self._sessions[component]


def _complete(cache: Path, settings: dict) -> bool:
    """Whether `cache` holds a whole saved graph made under `settings`: its record, and every file it lists."""
    try:
        record = json.loads((cache / _RECORD).read_text())
    except (OSError, ValueError):
        return False
    files = record.pop("files", None)
    return record == settings and bool(files) and all((cache / f).is_file() for f in files)
