"""Pure numpy schedulers, computed as diffusers computes them (float32), without state between calls.

A `Sampler` is built from the scheduler config the model ships; `schedule(steps)` gives timesteps and
sigmas, and `step(...)` maps (model output, sample) at index i to the sample at i + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turbo_runtime.errors import ArtifactError

SAMPLERS = {"EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_ancestral"}
_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "rescale_betas_zero_snr")


class NoiseSource:
    """Gaussian noise from one numpy generator: a seed gives the same draws on every backend."""

    def __init__(self, seed: int):
        self.seed = seed
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=np.float32)


@dataclass(frozen=True)
class Schedule:
    timesteps: np.ndarray  # (n,) float32, what the UNet receives
    sigmas: np.ndarray  # (n + 1,) float32, the last one 0
    init_noise_sigma: float


@dataclass(frozen=True)
class Sampler:
    kind: str  # "euler" | "euler_ancestral"
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    timestep_spacing: str
    steps_offset: int
    prediction_type: str

    @classmethod
    def from_config(cls, config: dict) -> Sampler:
        name = config.get("_class_name")
        if name not in SAMPLERS:
            raise ArtifactError(f"scheduler {name} is not supported; supported: {', '.join(SAMPLERS)}")
        for option in _UNSUPPORTED:
            if config.get(option):
                raise ArtifactError(f"scheduler option {option}=True is not supported")
        if (
            config.get("interpolation_type", "linear") != "linear"
            or config.get("timestep_type", "discrete") != "discrete"
        ):
            raise ArtifactError("only linear interpolation of discrete timesteps is supported")
        if config.get("final_sigmas_type", "zero") != "zero":
            raise ArtifactError("only final_sigmas_type='zero' is supported")
        sampler = cls(
            SAMPLERS[name],
            config.get("num_train_timesteps", 1000),
            config.get("beta_start", 0.0001),
            config.get("beta_end", 0.02),
            config.get("beta_schedule", "linear"),
            config.get("timestep_spacing", "linspace"),
            config.get("steps_offset", 0),
            config.get("prediction_type", "epsilon"),
        )
        if sampler.beta_schedule not in ("linear", "scaled_linear"):
            raise ArtifactError(f"beta_schedule {sampler.beta_schedule!r} is not supported")
        if sampler.timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ArtifactError(f"timestep_spacing {sampler.timestep_spacing!r} is not supported")
        if sampler.prediction_type not in ("epsilon", "v_prediction"):
            raise ArtifactError(f"prediction_type {sampler.prediction_type!r} is not supported")
        return sampler

    def _train_sigmas(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float32) ** 2
        else:
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float32)
        alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
        return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5

    def schedule(self, steps: int) -> Schedule:
        n = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            timesteps = np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
        elif self.timestep_spacing == "leading":
            ratio = n // steps
            timesteps = (np.arange(0, steps) * ratio).round()[::-1].astype(np.float32) + self.steps_offset
        else:  # trailing
            timesteps = np.arange(n, 0, -n / steps).round().astype(np.float32) - 1
        train_sigmas = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(n), train_sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        max_sigma = float(sigmas.max())
        init = max_sigma if self.timestep_spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5
        return Schedule(timesteps.astype(np.float32), sigmas, float(np.float32(init)))

    @staticmethod
    def scale_model_input(sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(
        self, schedule: Schedule, i: int, model_output: np.ndarray, sample: np.ndarray, noise: NoiseSource
    ) -> np.ndarray:
        """Sample at index i + 1 from the model's output at index i."""
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        if self.prediction_type == "epsilon":
            denoised = sample - sigma * model_output
        else:  # v_prediction
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        derivative = (sample - denoised) / sigma
        if self.kind == "euler":
            return (sample + derivative * (sigma_next - sigma)).astype(np.float32)
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        prev = sample + derivative * (sigma_down - sigma)
        return (prev + noise.normal(sample.shape) * sigma_up).astype(np.float32)
