"""What turbo-serve serves (a pipeline source) and how (limits, queue, key): plain data, no web framework."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from turbo_runtime.errors import InputError
from turbo_runtime.pipeline import TurboPipeline


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None  # every API and WebSocket call needs "Authorization: Bearer KEY" when set
    max_queue: int = 16  # requests waiting for the worker; one more answers 503
    timeout: float = 120.0  # seconds from arrival to the finished image; later answers 504
    max_body_bytes: int = 16 << 20  # request bodies and WebSocket messages
    max_prompt_chars: int = 4000
    max_images: int = 4  # images per request (OpenAI n, A1111 batch_size x n_iter)
    max_steps: int = 50
    max_image_pixels: int = 4096 * 4096  # uploaded init images, checked from the header before decoding
    cors_origins: tuple[str, ...] = ()  # none: no CORS headers, browsers allow same-origin calls only
    model_name: str | None = None  # the name clients see; default: the artifacts' model id
    replica: str | None = None  # in a cluster, this server's name: the x-turbo-replica header and a metrics label

    def __post_init__(self):
        for name in ("max_queue", "max_body_bytes", "max_prompt_chars", "max_images", "max_steps", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise InputError(f"timeout must be above 0 seconds, got {self.timeout}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key is empty; give a non-empty key or none")


@dataclass(frozen=True)
class PipelineSource:
    """How to build the served pipeline: exported artifacts, or a model exported on first use.

    Calling it loads and compiles (in the worker thread, so the server answers /health meanwhile); `check` runs
    the quick checks first, so a wrong folder or backend fails before the server starts listening.
    """

    artifacts: Path | None = None
    model: str | None = None
    backend: str = "auto"  # or a backend's name; auto: the fastest installed for this CPU (turbo_runtime.auto)
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    precision: str = "auto"  # with model: the export's
    vae: str | None = None  # with model: a tiny VAE instead of the model's
    height: int | None = None  # with model: the export's size, default the family's
    width: int | None = None
    quiet: bool = True  # with model: no export progress bar

    def __post_init__(self):
        if (self.artifacts is None) == (self.model is None):
            raise InputError("give exported artifacts or a model, not both and not neither")

    def check(self) -> None:
        from turbo_runtime.artifacts import Artifacts
        from turbo_runtime.auto import AUTO, check_names
        from turbo_runtime.backends import backend_class

        check_names(self.backend, self.precision, self.device)
        if self.backend != AUTO:
            backend_class(self.backend)  # an unknown backend or a missing package
        if self.artifacts is not None:
            Artifacts.load(self.artifacts)

    def __call__(self) -> TurboPipeline:
        options = dict(device=self.device, dtype=self.dtype, threads=self.threads)
        if self.artifacts is not None:
            return TurboPipeline.from_artifacts(self.artifacts, self.backend, **options)
        return TurboPipeline.from_model(
            self.model,
            self.backend,
            height=self.height,
            width=self.width,
            precision=self.precision,
            vae=self.vae,
            quiet=self.quiet,
            **options,
        )
