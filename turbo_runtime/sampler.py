"""Pure numpy schedulers, computed as diffusers computes them (float32).

A `Sampler` is built from the scheduler config the model ships, optionally switched to another scheduler
by name (as diffusers' `OtherScheduler.from_config(config)` does); `schedule(steps)` gives timesteps and
sigmas, and `step(...)` maps (model output, sample) at index i to the sample at i + 1. The only state is
the `history` list the caller keeps per image for the multistep solver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turbo_runtime.errors import ArtifactError, InputError

# Our scheduler names and the diffusers classes they reproduce.
SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
}
_NAME_OF_CLASS = {cls: name for name, cls in SCHEDULERS.items()}
_UNSUPPORTED = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "rescale_betas_zero_snr",
    "thresholding",
)


def scheduler_of(config: dict) -> str | None:
    """Our name for the scheduler a model ships, or None when it is not one we run."""
    return _NAME_OF_CLASS.get(config.get("_class_name"))


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
    sigmas: np.ndarray  # (n + 1,) float32, the last one 0 (or sigma_min)
    init_noise_sigma: float


def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
    """Variance-preserving (alpha_t, sigma_t) of a variance-exploding sigma."""
    alpha = np.float32(1) / np.sqrt(sigma * sigma + np.float32(1))
    return alpha, sigma * alpha


@dataclass(frozen=True)
class Sampler:
    name: str  # a key of SCHEDULERS
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    timestep_spacing: str
    steps_offset: int
    prediction_type: str
    # DPM-Solver++ only
    solver_order: int = 2
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"

    @classmethod
    def from_config(cls, config: dict, name: str | None = None) -> Sampler:
        """The model's scheduler, or the one called `name` with the model's noise schedule."""
        if name is None:
            name = scheduler_of(config)
            if name is None:
                raise ArtifactError(
                    f"scheduler {config.get('_class_name')} is not supported; supported: {', '.join(SCHEDULERS.values())}"
                )
        elif name not in SCHEDULERS:
            raise InputError(f"unknown scheduler {name!r}; choose from: {', '.join(SCHEDULERS)}")
        if scheduler_of(config) != name:  # options of another class do not carry over, as in diffusers
            config = {k: v for k, v in config.items() if k in _OPTIONS[name]}
        if config.get("trained_betas") is not None:
            raise ArtifactError("scheduler option trained_betas is not supported")
        for option in _UNSUPPORTED:
            if config.get(option):
                raise ArtifactError(f"scheduler option {option}=True is not supported")
        if (
            config.get("interpolation_type", "linear") != "linear"
            or config.get("timestep_type", "discrete") != "discrete"
        ):
            raise ArtifactError("only linear interpolation of discrete timesteps is supported")
        dpm = name == "dpm++2m"
        if not dpm and config.get("final_sigmas_type", "zero") != "zero":
            raise ArtifactError("only final_sigmas_type='zero' is supported")
        if dpm:
            if config.get("algorithm_type", "dpmsolver++") != "dpmsolver++":
                raise ArtifactError(f"DPM-Solver algorithm_type {config['algorithm_type']!r} is not supported")
            if config.get("solver_order", 2) not in (1, 2):
                raise ArtifactError(f"DPM-Solver solver_order {config['solver_order']} is not supported (1 or 2)")
            if config.get("lambda_min_clipped", -np.inf) != -np.inf or config.get("variance_type") is not None:
                raise ArtifactError("DPM-Solver lambda_min_clipped and variance_type are not supported")
        extra = {}
        if dpm:
            extra = dict(
                solver_order=config.get("solver_order", 2),
                solver_type=config.get("solver_type", "midpoint"),
                lower_order_final=config.get("lower_order_final", True),
                euler_at_final=config.get("euler_at_final", False),
                final_sigmas_type=config.get("final_sigmas_type", "zero"),
            )
        sampler = cls(
            name,
            config.get("num_train_timesteps", 1000),
            config.get("beta_start", 0.0001),
            config.get("beta_end", 0.02),
            config.get("beta_schedule", "linear"),
            config.get("timestep_spacing", "linspace"),
            config.get("steps_offset", 0),
            config.get("prediction_type", "epsilon"),
            **extra,
        )
        if sampler.beta_schedule not in ("linear", "scaled_linear"):
            raise ArtifactError(f"beta_schedule {sampler.beta_schedule!r} is not supported")
        if sampler.timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ArtifactError(f"timestep_spacing {sampler.timestep_spacing!r} is not supported")
        if sampler.prediction_type not in ("epsilon", "v_prediction"):
            raise ArtifactError(f"prediction_type {sampler.prediction_type!r} is not supported")
        if sampler.final_sigmas_type not in ("zero", "sigma_min"):
            raise ArtifactError(f"final_sigmas_type {sampler.final_sigmas_type!r} is not supported")
        return sampler

    @property
    def variance_preserving(self) -> bool:
        """DPM-Solver works on alpha_t * x0 + sigma_t * noise; Euler on x0 + sigma * noise."""
        return self.name == "dpm++2m"

    def _train_sigmas(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float32) ** 2
        else:
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float32)
        alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
        return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5

    def _timesteps(self, steps: int) -> np.ndarray:
        n = self.num_train_timesteps
        if self.variance_preserving:  # DPM-Solver: integer timesteps, one more point dropped at the end
            if self.timestep_spacing == "linspace":
                return np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy()
            if self.timestep_spacing == "leading":
                ratio = n // (steps + 1)
                return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1] + self.steps_offset
            return np.arange(n, 0, -n / steps).round() - 1
        if self.timestep_spacing == "linspace":
            return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
        if self.timestep_spacing == "leading":
            ratio = n // steps
            return (np.arange(0, steps) * ratio).round()[::-1].astype(np.float32) + self.steps_offset
        return np.arange(n, 0, -n / steps).round().astype(np.float32) - 1

    def schedule(self, steps: int) -> Schedule:
        timesteps = self._timesteps(steps).astype(np.float32)
        train_sigmas = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(self.num_train_timesteps), train_sigmas)
        last = train_sigmas[0] if self.final_sigmas_type == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        if self.variance_preserving:
            init = 1.0
        else:
            max_sigma = float(sigmas.max())
            init = max_sigma if self.timestep_spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5
        return Schedule(timesteps, sigmas, float(np.float32(init)))

    def scale_model_input(self, sample: np.ndarray, schedule: Schedule, i: int) -> np.ndarray:
        if self.variance_preserving:
            return sample
        sigma = schedule.sigmas[i]
        return sample / ((sigma**2 + 1) ** 0.5)

    def add_noise(self, latents: np.ndarray, noise: np.ndarray, schedule: Schedule, i: int) -> np.ndarray:
        """Image-to-image: clean latents noised to the level of step i."""
        sigma = schedule.sigmas[i]
        if self.variance_preserving:
            alpha, sigma_t = _alpha_sigma(sigma)
            return alpha * latents + sigma_t * noise
        return latents + noise * sigma

    def step(
        self,
        schedule: Schedule,
        i: int,
        model_output: np.ndarray,
        sample: np.ndarray,
        noise: NoiseSource,
        history: list[np.ndarray],
    ) -> np.ndarray:
        """Sample at index i + 1 from the model's output at index i; `history` holds the solver's past outputs."""
        if self.variance_preserving:
            return self._dpm_step(schedule, i, model_output, sample, history)
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        if self.prediction_type == "epsilon":
            denoised = sample - sigma * model_output
        else:  # v_prediction
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        derivative = (sample - denoised) / sigma
        if self.name == "euler":
            return (sample + derivative * (sigma_next - sigma)).astype(np.float32)
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        prev = sample + derivative * (sigma_down - sigma)
        return (prev + noise.normal(sample.shape) * sigma_up).astype(np.float32)

    def _dpm_step(self, schedule: Schedule, i: int, model_output, sample, history: list[np.ndarray]) -> np.ndarray:
        """DPM-Solver++ (data prediction), first or second order multistep."""
        n = len(schedule.timesteps)
        alpha_s, sigma_s = _alpha_sigma(schedule.sigmas[i])
        if self.prediction_type == "epsilon":
            x0 = (sample - sigma_s * model_output) / alpha_s
        else:  # v_prediction
            x0 = alpha_s * sample - sigma_s * model_output
        history.append(x0)
        del history[: -self.solver_order]
        last = i == n - 1
        first_order = (
            self.solver_order == 1
            or len(history) < 2
            or (
                last
                and (self.euler_at_final or (self.lower_order_final and n < 15) or self.final_sigmas_type == "zero")
            )
        )
        sigma_next = schedule.sigmas[i + 1]
        if sigma_next == 0:  # the limit of the first-order update: the predicted clean sample
            return x0.astype(np.float32)
        alpha_t, sigma_t = _alpha_sigma(sigma_next)
        lambda_t = np.log(alpha_t) - np.log(sigma_t)
        lambda_s = np.log(alpha_s) - np.log(sigma_s)
        h = lambda_t - lambda_s
        decay = alpha_t * (np.exp(-h) - np.float32(1))
        if first_order:
            return ((sigma_t / sigma_s) * sample - decay * x0).astype(np.float32)
        alpha_p, sigma_p = _alpha_sigma(schedule.sigmas[i - 1])
        lambda_p = np.log(alpha_p) - np.log(sigma_p)
        r = (lambda_s - lambda_p) / h
        d0, d1 = history[-1], (np.float32(1) / r) * (history[-1] - history[-2])
        if self.solver_type == "midpoint":
            prev = (sigma_t / sigma_s) * sample - decay * d0 - np.float32(0.5) * decay * d1
        else:  # heun
            prev = (sigma_t / sigma_s) * sample - decay * d0 + (alpha_t * ((np.exp(-h) - 1) / h + 1)) * d1
        return prev.astype(np.float32)


# The config keys each diffusers class accepts: switching schedulers keeps only the target's, as from_config does.
_COMMON = {
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
}
_SIGMA_OPTIONS = {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "final_sigmas_type"}
_OPTIONS = {
    "euler": _COMMON | _SIGMA_OPTIONS | {"interpolation_type", "timestep_type", "sigma_min", "sigma_max"},
    "euler-ancestral": _COMMON,
    "dpm++2m": _COMMON
    | _SIGMA_OPTIONS
    | {
        "algorithm_type",
        "solver_order",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "lambda_min_clipped",
        "variance_type",
        "thresholding",
        "use_lu_lambdas",
        "use_flow_sigmas",
    },
}
