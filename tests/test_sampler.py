"""The numpy schedulers against diffusers' own, step by step."""

import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_module
import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from export.wrappers import scheduler_config
from turbo_runtime.errors import ArtifactError, InputError
from turbo_runtime.sampler import NoiseSource, Sampler

BASE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
CONFIGS = [
    (EulerDiscreteScheduler, dict(BASE, timestep_spacing="trailing")),
    (EulerDiscreteScheduler, dict(BASE, timestep_spacing="leading")),
    (EulerDiscreteScheduler, dict(BASE, timestep_spacing="linspace", prediction_type="v_prediction")),
    (EulerDiscreteScheduler, dict(beta_schedule="linear", timestep_spacing="trailing")),
    (EulerAncestralDiscreteScheduler, dict(BASE, timestep_spacing="trailing")),
    (EulerAncestralDiscreteScheduler, dict(BASE, timestep_spacing="leading")),
    (DPMSolverMultistepScheduler, dict(BASE, timestep_spacing="leading")),
    (DPMSolverMultistepScheduler, dict(BASE, timestep_spacing="linspace")),
    (DPMSolverMultistepScheduler, dict(BASE, timestep_spacing="trailing", prediction_type="v_prediction")),
    (DPMSolverMultistepScheduler, dict(BASE, solver_type="heun", lower_order_final=False)),
    (DPMSolverMultistepScheduler, dict(BASE, final_sigmas_type="sigma_min", solver_order=1)),
    (DPMSolverMultistepScheduler, dict(beta_schedule="linear", euler_at_final=True)),
]


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding over many steps, measured against the largest value (samples reach 1e2)."""
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def _config(scheduler) -> dict:
    """What the export stores: the options the config sets (diffusers fills in the others per class)."""
    return scheduler_config(scheduler)


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
@pytest.mark.parametrize("steps,begin", [(1, 0), (4, 0), (10, 0), (20, 0), (10, 4)])
def test_steps_match_diffusers(cls, kwargs, steps, begin, monkeypatch):
    """Every step from index `begin` on (image-to-image starts late, with no solver history)."""
    ref = cls(**kwargs)
    ref.set_timesteps(steps)
    ref.set_begin_index(begin)
    sampler = Sampler.from_config(_config(ref))
    schedule = sampler.schedule(steps)
    # Both draw their ancestral noise from the same seeded numpy source.
    ref_noise, our_noise = NoiseSource(7), NoiseSource(7)
    monkeypatch.setattr(
        ancestral_module, "randn_tensor", lambda shape, **_: torch.from_numpy(ref_noise.normal(tuple(shape)))
    )
    rng = np.random.default_rng(0)
    x0, noise = (rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(2))
    if begin:
        x = sampler.add_noise(x0, noise, schedule, begin)
        x_ref = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), ref.timesteps[begin : begin + 1])
        assert_close(x, x_ref.numpy())
    else:
        x = noise * schedule.init_noise_sigma
        x_ref = torch.from_numpy(noise) * ref.init_noise_sigma
    history = []
    for i in range(begin, steps):
        t = ref.timesteps[i]
        eps = rng.standard_normal(x.shape).astype(np.float32)
        scaled_ref = ref.scale_model_input(x_ref, t)
        assert_close(sampler.scale_model_input(x, schedule, i), scaled_ref.numpy())
        x_ref = ref.step(torch.from_numpy(eps), t, x_ref).prev_sample
        x = sampler.step(schedule, i, eps, x, our_noise, history)
        assert_close(x, x_ref.numpy())


@pytest.mark.parametrize("source", [PNDMScheduler(**BASE, skip_prk_steps=True), EulerDiscreteScheduler(**BASE)])
@pytest.mark.parametrize("name,cls", [("dpm++2m", DPMSolverMultistepScheduler), ("euler", EulerDiscreteScheduler)])
def test_switching_scheduler_matches_from_config(source, name, cls):
    """--scheduler NAME on a model that ships another one equals diffusers' cls.from_config(shipped config)."""
    ref = cls.from_config(source.config)
    ref.set_timesteps(10)
    ours = Sampler.from_config(_config(source), name).schedule(10)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-5)


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


def test_unsupported_dpm_options_are_refused():
    config = _config(DPMSolverMultistepScheduler(**BASE, algorithm_type="sde-dpmsolver++"))
    with pytest.raises(ArtifactError, match="algorithm_type 'sde-dpmsolver\\+\\+' is not supported"):
        Sampler.from_config(config)


def test_unknown_scheduler_name_lists_the_choices():
    with pytest.raises(InputError, match=r"unknown scheduler 'ddim'; choose from: euler, euler-ancestral, dpm\+\+2m"):
        Sampler.from_config(_config(EulerDiscreteScheduler(**BASE)), "ddim")
