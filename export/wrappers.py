"""Thin nn.Modules that fix each component's signature: the export traces them, the torch backend runs them.

Each wrapper's forward arguments and outputs are the artifact's I/O contract (names in turbo_runtime.spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from turbo_runtime.spec import PIPELINE_OPTIONS, Family, ModelDims


class TextEncoder(nn.Module):
    """input_ids -> hidden_states (+ text_embeds for SDXL's second encoder).

    SD 2.x uses the last layer (the hub checkpoint already drops OpenCLIP's final block); SDXL uses the
    penultimate layer of both encoders and the projected pooled output of the second.
    """

    def __init__(self, model: nn.Module, penultimate: bool, pooled: bool):
        super().__init__()
        self.model, self.penultimate, self.pooled = model, penultimate, pooled

    def forward(self, input_ids: torch.Tensor):
        out = self.model(input_ids, output_hidden_states=self.penultimate)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        return (hidden, out.text_embeds) if self.pooled else hidden


class UNet(nn.Module):
    """sample, timestep, encoder_hidden_states (+ text_embeds, time_ids for SDXL) -> noise_pred."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


class VaeEncoder(nn.Module):
    """image in [-1, 1] -> latent distribution mean (a tiny VAE's latents), times the VAE scaling factor."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae, self.scaling_factor = vae, vae.config.scaling_factor

    def forward(self, image):
        out = self.vae.encode(image)
        latents = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents  # AutoencoderTiny: latents
        return latents * self.scaling_factor


class VaeDecoder(nn.Module):
    """scaled latent -> image in [-1, 1] (not clipped)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae, self.scaling_factor = vae, vae.config.scaling_factor

    def forward(self, latent):
        return self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]


@dataclass
class LoadedModel:
    """A source model's components wrapped for tracing, with what the artifacts need besides weights."""

    modules: dict[str, nn.Module]
    dims: ModelDims
    tokenizers: dict[str, object]  # transformers tokenizers by folder name
    scheduler_config: dict
    options: dict[str, bool]  # the SDXL pipeline switches in PIPELINE_OPTIONS


def scheduler_config(scheduler) -> dict:
    """The options the model's scheduler config sets, and its class; options it leaves out are left out, so that
    switching to another scheduler fills them with that scheduler's defaults, as diffusers' from_config does."""
    defaults = set(scheduler.config.get("_use_default_values") or ())
    config = {k: v for k, v in scheduler.config.items() if not k.startswith("_") and k not in defaults}
    return {**config, "_class_name": type(scheduler).__name__}


def replaced_components(family: Family, vae_path: Path | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """from_pretrained overrides: components the artifacts do without (SD 1.x's safety checker is not exported),
    and the tiny VAE (AutoencoderTiny at `vae_path`) that stands in for the model's VAE."""
    import diffusers

    replaced = {}
    if family.pipeline_class == "StableDiffusionPipeline":
        replaced = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if vae_path is not None:
        replaced["vae"] = diffusers.AutoencoderTiny.from_pretrained(vae_path, dtype=dtype)
    return replaced


def load_model(
    path: Path,
    family: Family,
    variant: str | None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    vae_path: Path | None = None,
) -> LoadedModel:
    """Load a diffusers folder of `family` and wrap its components; `vae_path`: a tiny VAE to use instead."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    pipeline_class = getattr(diffusers, family.pipeline_class)
    replaced = replaced_components(family, vae_path, dtype)
    pipe = pipeline_class.from_pretrained(path, variant=variant, dtype=dtype, **replaced)
    sdxl = "text_encoder_2" in family.text_encoders
    modules: dict[str, nn.Module] = {}
    for name in family.text_encoders:
        modules[name] = TextEncoder(getattr(pipe, name), penultimate=sdxl, pooled=name == "text_encoder_2")
    modules["unet"] = UNet(pipe.unet)
    modules["vae_encoder"] = VaeEncoder(pipe.vae)
    modules["vae_decoder"] = VaeDecoder(pipe.vae)
    for module in modules.values():
        module.to(device).eval().requires_grad_(False)
    tokenizers = {name: getattr(pipe, name) for name in family.tokenizers}
    unet = pipe.unet.config
    pooled_dim = pipe.text_encoder_2.config.projection_dim if sdxl else None
    time_ids = None
    if unet.addition_embed_type == "text_time":  # SDXL: sizes and crop (+ aesthetic score), each embedded
        time_ids = (unet.projection_class_embeddings_input_dim - pooled_dim) // unet.addition_time_embed_dim
    dims = ModelDims(
        text_length=tokenizers[family.tokenizers[0]].model_max_length,
        text_hidden=tuple(getattr(pipe, name).config.hidden_size for name in family.text_encoders),
        pooled_dim=pooled_dim,
        time_ids=time_ids,
        latent_channels=unet.in_channels,
        vae_scale_factor=2 ** (len(pipe.vae.config.block_out_channels) - 1),
    )
    options = {key: bool(pipe.config.get(key, False)) for key in PIPELINE_OPTIONS}
    options["vae_force_upcast"] = bool(pipe.vae.config.get("force_upcast", True))
    return LoadedModel(modules, dims, tokenizers, scheduler_config(pipe.scheduler), options)
