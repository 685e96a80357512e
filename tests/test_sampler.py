"""The numpy schedulers against diffusers' own, step by step."""

import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_module
import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from turbo_runtime.errors import ArtifactError
from turbo_runtime.sampler import NoiseSource, Sampler

BASE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
CONFIGS = [
    (EulerDiscreteScheduler, dict(BASE, timestep_spacing="trailing")),
    (EulerDiscreteScheduler, dict(BASE, timestep_spacing="leading")),
    (EulerDiscreteScheduler, dict(BASE, timestep_spacing="linspace", prediction_type="v_prediction")),
    (EulerDiscreteScheduler, dict(beta_schedule="linear", timestep_spacing="trailing")),
    (EulerAncestralDiscreteScheduler, dict(BASE, timestep_spacing="trailing")),
    (EulerAncestralDiscreteScheduler, dict(BASE, timestep_spacing="leading")),
]


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding, measured against the largest value (these samples reach 1e2)."""
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-6 * max(1.0, np.abs(expected).max())


def _config(scheduler) -> dict:
    return {**scheduler.config, "_class_name": type(scheduler).__name__}


@pytest.mark.parametrize("cls,kwargs", CONFIGS)
@pytest.mark.parametrize("steps", [1, 2, 4, 25])
def test_schedule_matches_diffusers(cls, kwargs, steps):
    ref = cls(**kwargs)
    ref.set_timesteps(steps)
    ours = Sampler.from_config(_config(ref)).schedule(steps)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-5)
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-5)


@pytest.mark.parametrize("cls,kwargs", CONFIGS)
@pytest.mark.parametrize("steps", [1, 4])
def test_steps_match_diffusers(cls, kwargs, steps, monkeypatch):
    ref = cls(**kwargs)
    ref.set_timesteps(steps)
    sampler = Sampler.from_config(_config(ref))
    schedule = sampler.schedule(steps)
    # Both draw their ancestral noise from the same seeded numpy source.
    ref_noise, our_noise = NoiseSource(7), NoiseSource(7)
    monkeypatch.setattr(
        ancestral_module, "randn_tensor", lambda shape, **_: torch.from_numpy(ref_noise.normal(tuple(shape)))
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32) * schedule.init_noise_sigma
    x_ref = torch.from_numpy(x.copy())
    for i, t in enumerate(ref.timesteps):
        eps = rng.standard_normal(x.shape).astype(np.float32)
        scaled_ref = ref.scale_model_input(x_ref, t)
        assert_close(sampler.scale_model_input(x, schedule.sigmas[i]), scaled_ref.numpy())
        x_ref = ref.step(torch.from_numpy(eps), t, x_ref).prev_sample
        x = sampler.step(schedule, i, eps, x, our_noise)
        assert_close(x, x_ref.numpy())


def test_noise_source_is_deterministic_per_seed():
    a, b, c = NoiseSource(1).normal((2, 3)), NoiseSource(1).normal((2, 3)), NoiseSource(2).normal((2, 3))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"_class_name": "DDIMScheduler"}, "scheduler DDIMScheduler is not supported"),
        ({"use_karras_sigmas": True}, "use_karras_sigmas=True is not supported"),
        ({"prediction_type": "sample"}, "prediction_type 'sample' is not supported"),
    ],
)
def test_unsupported_scheduler_configs_are_refused(change, message):
    config = {**_config(EulerDiscreteScheduler(**BASE)), **change}
    with pytest.raises(ArtifactError, match=message):
        Sampler.from_config(config)
