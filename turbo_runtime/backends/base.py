"""The seam between the sampling loop and an inference engine: numpy float32 arrays on the host."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.errors import InputError
from turbo_runtime.spec import ComponentIO

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BackendOptions:
    device: str | None = None  # backend's own device name; None picks its default
    dtype: str | None = None  # inference precision; None picks the backend's best for the device
    threads: int | None = None  # CPU threads; None lets the engine decide
    cache_dir: Path | None = None  # compiled-model caches (OpenVINO; ONNX Runtime's optimized graphs)
    vae_encoder: bool = True  # False loads no VAE encoder: text-to-image only, less memory, a faster start
    # Tuning of PyTorch modules, for the torch backend only:
    compile_mode: str | None = None  # torch.compile mode ("default", "reduce-overhead", ...); None runs eagerly
    cuda_graphs: bool = False  # replay each component as a CUDA graph captured once (CUDA only)
    channels_last: bool = False  # convolutions on NHWC tensors


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on besides the latents and the timestep."""

    encoder_hidden_states: np.ndarray
    text_embeds: np.ndarray | None = None  # SDXL pooled text embedding
    time_ids: np.ndarray | None = None  # SDXL micro-conditioning (original size, crop, target size)

    @staticmethod
    def concat(first: Conditioning, second: Conditioning) -> Conditioning:
        """Both along the batch axis, for one UNet call on two branches."""
        return Conditioning(
            *(
                None if a is None else np.concatenate([a, b])
                for a, b in zip(
                    (first.encoder_hidden_states, first.text_embeds, first.time_ids),
                    (second.encoder_hidden_states, second.text_embeds, second.time_ids),
                )
            )
        )


class Backend:
    """Typed component calls shared by every engine; each engine implements `_run` and its own casts.

    Subclasses load and compile every component in their constructor, so no call hides a compile.
    """

    name: ClassVar[str]
    artifact_format: ClassVar[str | None]  # the export format it reads, None for the torch backend
    device: str  # the engine's own name of the device it runs on
    inference_precision: str  # what it computes in: "f32", "bf16", "f16", or the exported graph's ("int8")
    tunes_torch_modules: ClassVar[bool] = False  # takes compile_mode, cuda_graphs and channels_last

    def __init__(self, artifacts: Artifacts, options: BackendOptions):
        if options.dtype is not None and options.dtype not in DTYPES:
            raise InputError(f"unknown dtype {options.dtype!r}; choose from: {', '.join(DTYPES)}")
        if options.threads is not None and options.threads < 1:
            raise InputError(f"threads must be at least 1, got {options.threads}")
        tuning = [f for f in ("compile_mode", "cuda_graphs", "channels_last") if getattr(options, f)]
        if tuning and not self.tunes_torch_modules:
            raise InputError(f"{', '.join(tuning)}: options of the torch backend, not of {self.name}")
        self.artifacts = artifacts
        self.options = options
        self.family = artifacts.family
        self.io: dict[str, ComponentIO] = {c: artifacts.io(c) for c in self.family.components}
        self.components = tuple(c for c in self.family.components if options.vae_encoder or c != "vae_encoder")
        self.released: tuple[str, ...] = ()  # components freed by release()
        # Latents per UNet call this backend takes: the exported static batch, unless the engine is dynamic.
        self.unet_batches: tuple[int, ...] = (artifacts.unet_batch,)

    def cache_folder(self, cache_dir: Path, component: str, settings: str = "") -> Path:
        """The compile-cache folder of a component's files (named by their sha256 in the manifest, and by
        `settings`, what else decides the entries: engine version, options, CPU): each holds the entries of one
        graph only, so they can be checked before it is compiled (files.checked_cache)."""
        listed = self.artifacts.manifest["files"]
        files = self.artifacts.manifest["components"][component]["files"][self.artifact_format]
        key = hashlib.sha256(" ".join([*(listed[f] for f in files), *([settings] if settings else [])]).encode())
        return cache_dir / f"{component}-{key.hexdigest()[:16]}"

    def upcast(self, component: str) -> bool:
        """Whether `component` runs in float32 when the rest runs in float16: VAEs that overflow in float16."""
        return component.startswith("vae") and self.artifacts.pipeline_options.get("vae_force_upcast", True)

    def _run(self, component: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run one component on inputs in manifest order; outputs float32, in manifest order."""
        raise NotImplementedError

    def _release(self, component: str) -> None:
        """Drop the engine's compiled `component`, and with it the memory it holds."""
        raise NotImplementedError

    def release(self, *components: str) -> None:
        """Free `components` after their last use (a one-shot pipeline); calling one afterwards raises InputError."""
        for component in components:
            if component in self.components:
                self._release(component)
                self.released += (component,)
        self.components = tuple(c for c in self.components if c not in components)

    def _call(self, component: str, *inputs: np.ndarray) -> list[np.ndarray]:
        if component in self.released:
            raise InputError(f"{component} was released after its last use (a one-shot pipeline); load it again")
        specs = self.io[component].inputs
        batch = inputs[0].shape[0] if component == "unet" and inputs[0].shape[0] in self.unet_batches else None
        checked = []
        for spec, value in zip(specs, inputs, strict=True):
            value = np.ascontiguousarray(value, dtype=spec.dtype)
            expected = spec.shape if batch is None or spec.name == "timestep" else (batch, *spec.shape[1:])
            if value.shape != expected:
                raise InputError(
                    f"{component} input {spec.name!r} has shape {value.shape}, the exported static shape is "
                    f"{spec.shape}; export for this shape with turbo-export --height/--width"
                )
            checked.append(value)
        return self._run(component, checked)

    def encode_text(self, input_ids: tuple[np.ndarray, ...]) -> Conditioning:
        """Token ids, one array per text encoder, to the UNet's text conditioning."""
        hidden, pooled = [], None
        for name, ids in zip(self.family.text_encoders, input_ids, strict=True):
            out = self._call(name, ids)
            hidden.append(out[0])
            if len(out) > 1:
                pooled = out[1]
        return Conditioning(np.concatenate(hidden, axis=-1), pooled)

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        """Image in [-1, 1], NCHW, to the scaled latent mean."""
        if "vae_encoder" not in self.components + self.released:
            raise InputError("this pipeline was loaded without its VAE encoder (vae_encoder=False): text-to-image only")
        return self._call("vae_encoder", image)[0]

    def predict_noise(self, latents: np.ndarray, timestep: np.ndarray, cond: Conditioning) -> np.ndarray:
        extra = () if cond.text_embeds is None else (cond.text_embeds, cond.time_ids)
        return self._call("unet", latents, timestep, cond.encoder_hidden_states, *extra)[0]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents to an image in [-1, 1] (unclipped), NCHW float32."""
        return self._call("vae_decoder", latents)[0]
