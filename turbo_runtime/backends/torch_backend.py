"""PyTorch backend: the very wrapper modules the export traced, loaded from the artifacts' source model.

Eager by default; on request each component is compiled (torch.compile), replayed as a captured CUDA graph, or laid
out channels-last. Whatever is asked for is done in the constructor, with a warm-up call per component, so the first
image pays for no compile, capture or lazy CUDA set-up.
"""

from __future__ import annotations

import logging
import time

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

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
WARMUP_CALLS = 3  # torch.compile's CUDA graphs record on the third call of a shape; cuDNN settles in the first
# Inputs that stay float32 whatever the dtype: diffusers hands the UNet its timestep in float32, and bfloat16 would
# round it (999 to 1000, 749 to 748: 8 bits of mantissa) before the time embedding, which computes in float32.
_FLOAT32_INPUTS = ("timestep",)


def torch_device(name: str | None) -> str:
    """The torch device to run on: `cpu`, `cuda` or `cuda:N`, checked against what this process sees."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name.lower())
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"unknown torch device {name!r}; choose from: cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {name} was asked for but this torch build sees no CUDA device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {name}: this process sees {count} CUDA device(s), numbered from 0")
    return str(device)


class _Graphed:
    """A module captured as one CUDA graph on fixed input tensors: a call copies its inputs into them and replays.

    The outputs are the graph's own tensors, overwritten by the next replay: callers copy them out first."""

    def __init__(self, module: torch.nn.Module, inputs: list[torch.Tensor]):
        self.device = inputs[0].device  # captured and replayed with this device current (cuda:N)
        self.inputs = [x.clone() for x in inputs]
        with torch.cuda.device(self.device):
            # Warm up on a side stream, as torch.cuda.graph asks: cuDNN and cuBLAS pick and load their kernels there.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_CALLS):
                    module(*self.inputs)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                out = module(*self.inputs)
        self.outputs = out if isinstance(out, tuple) else (out,)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.cuda.device(self.device):
            for static, x in zip(self.inputs, inputs, strict=True):
                static.copy_(x)
            self.graph.replay()
        return self.outputs


class TorchBackend(Backend):
    name = "torch"
    artifact_format = None
    tunes_torch_modules = True

    def __init__(self, artifacts: Artifacts, options: BackendOptions):
        super().__init__(artifacts, options)
        device = torch_device(options.device)
        cuda = device.startswith("cuda")
        dtype = options.dtype or "float32"
        if dtype == "float16" and not cuda:
            raise InputError("float16 runs only on CUDA with the torch backend; use bfloat16 or float32 on the CPU")
        mode = options.compile_mode
        if mode is not None and mode not in COMPILE_MODES:
            raise InputError(f"unknown torch.compile mode {mode!r}; choose from: {', '.join(COMPILE_MODES)}")
        if options.cuda_graphs and mode is not None:
            raise InputError(
                "cuda_graphs captures the eager modules; for compiled modules in CUDA graphs give compile_mode "
                "'reduce-overhead' alone"
            )
        if options.cuda_graphs and not cuda:
            raise InputError(f"cuda_graphs needs a CUDA device, not {device}: pass device='cuda' or drop cuda_graphs")
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
        static = options.cuda_graphs or mode is not None
        # Eager shapes are dynamic: guidance runs both branches in one call, as diffusers does. A graph or a compiled
        # module is made for one shape: the batch the family's calls use (an unguided call on 2 runs its branch twice).
        self.unet_batches = ((2,) if self.family.guided else (1,)) if static else (1, 2)
        self._dtypes = {c: torch.float32 if dtype == "float16" and self.upcast(c) else _DTYPES[dtype] for c in self.io}
        self._channels_last = options.channels_last
        vae_path = vae.path if vae else None
        modules = load_model(source.path, self.family, source.variant, vae_path=vae_path).modules  # f32, CPU
        self._modules = {c: m for c, m in modules.items() if c in self.components}
        for component, module in self._modules.items():
            module.to(device=device, dtype=self._dtypes[component])
            if self._channels_last:  # the 4-D weights, the convolutions'; the text encoders have none
                module.to(memory_format=torch.channels_last)
        self._calls = dict(self._modules)
        if static or cuda:
            self._prepare(mode, options.cuda_graphs)

    def _prepare(self, mode: str | None, cuda_graphs: bool) -> None:
        """Compile or capture each component, warming it up on inputs of its shape (eager CUDA: lazy set-up)."""
        for component, module in self._modules.items():
            start = time.perf_counter()
            inputs = self._tensors(component, self._warmup_inputs(component))
            try:
                with torch.inference_mode():
                    if cuda_graphs:
                        self._calls[component] = _Graphed(module, inputs)
                    else:
                        if mode is not None:
                            self._calls[component] = torch.compile(module, mode=mode, dynamic=False)
                        for _ in range(WARMUP_CALLS if mode is not None else 1):
                            self._calls[component](*inputs)
            except Exception as e:  # torch raises many types here; the first line says which step failed
                how = "CUDA graph capture" if cuda_graphs else f"torch.compile (mode {mode})" if mode else "warm-up"
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise BackendUnavailable(f"{how} of {component} failed on {self.device}: {first}") from e
            log.info("%s ready in %.1f s", component, time.perf_counter() - start)

    def _warmup_inputs(self, component: str) -> list[np.ndarray]:
        """Inputs of the component's static shapes (the UNet at the batch its calls use) with plausible values."""
        rng = np.random.default_rng(0)
        batch = 2 if self.family.guided else 1
        h, w = self.artifacts.height, self.artifacts.width
        values = []
        for spec in self.io[component].inputs:
            shape = spec.shape if component != "unet" or spec.name == "timestep" else (batch, *spec.shape[1:])
            if spec.name == "input_ids":
                value = np.zeros(shape)
            elif spec.name == "timestep":
                value = np.full(shape, 999.0)
            elif spec.name == "time_ids":  # original size, crop, then target size or (refiner) an aesthetic score
                value = np.tile([h, w, 0, 0, h, w] if shape[1] == 6 else [h, w, 0, 0, 6.0], (shape[0], 1))
            else:
                value = rng.standard_normal(shape)
            values.append(np.ascontiguousarray(value, dtype=spec.dtype))
        return values

    def _tensors(self, component: str, inputs: list[np.ndarray]) -> list[torch.Tensor]:
        """Host arrays to the device, floats in the component's dtype (the timestep stays float32)."""
        dtype = self._dtypes[component]
        tensors = []
        for spec, x in zip(self.io[component].inputs, inputs, strict=True):
            cast = dtype if x.dtype == np.float32 and spec.name not in _FLOAT32_INPUTS else None
            t = torch.from_numpy(x).to(device=self.device, dtype=cast)
            if self._channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            tensors.append(t)
        return tensors

    def _run(self, component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        tensors = self._tensors(component, inputs)
        with torch.inference_mode():
            out = self._calls[component](*tensors)
            outs = out if isinstance(out, tuple) else (out,)
            return [o.float().cpu().numpy() for o in outs]

    def _release(self, component: str) -> None:
        del self._modules[component], self._calls[component]
