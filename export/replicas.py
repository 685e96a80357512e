"""Built-in replicas: the seed models' component classes with random weights, saved in diffusers format.

`tiny-*` shrink every component to a few channels and layers (built in seconds) for tests and the offline demo;
`*-arch` use the published configurations at full size for benchmarks. Weights are deterministic from a seed,
so a replica's files, and hence its source hash, are the same on every machine. Their images are noise.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from turbo_runtime.files import cache_root
from turbo_runtime.spec import TINY_VAE

log = logging.getLogger(__name__)

# Bump when a replica's construction changes, so cached copies are rebuilt.
REPLICA_VERSION = 1
SEED = 0

_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="trailing",
)


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (GPT-2, CLIP) uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


# A few merges so that tokenization exercises real BPE, not only single bytes.
_MERGES = [("r", "e"), ("re", "d</w>"), ("f", "o"), ("fo", "x</w>"), ("t", "h"), ("th", "e</w>"), ("i", "n</w>")]


def make_tokenizer(pad_token: str):
    """A CLIP tokenizer with a byte-level vocabulary of about 520 entries, generated here."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in _byte_chars():
            vocab[c + suffix] = len(vocab)
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=_MERGES, pad_token=pad_token, model_max_length=77)
    return tok


def _text_config(tok, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=kw.pop("vocab_size", len(tok)),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=77,
        **kw,
    )


def _vae(tiny: bool, scaling_factor: float):
    from diffusers import AutoencoderKL

    if tiny:
        # Four blocks keep the real 8x down-sampling; channels are tiny.
        return AutoencoderKL(
            block_out_channels=(16, 32, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=64,
            scaling_factor=scaling_factor,
        )
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=scaling_factor,
    )


def _sd(tiny: bool, v1: bool = False):
    """SD-Turbo (SD 2.1 architecture, OpenCLIP-H text encoder), or with v1 an SD 1.x model as
    small-stable-diffusion-v0 (CLIP ViT-L text encoder, one layer per UNet block, DPM-Solver++ as it ships)."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    tok = make_tokenizer(pad_token="<|endoftext|>" if v1 else "!")
    if tiny:
        text = _text_config(
            tok, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, hidden_act="gelu"
        )
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1 if v1 else 2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8 if v1 else (2, 4),
            cross_attention_dim=32,
            use_linear_projection=not v1,
            norm_num_groups=16,
            sample_size=64,
        )
    elif v1:
        text = _text_config(
            tok,
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=8,
            cross_attention_dim=768,
            sample_size=64,
        )
    else:
        text = _text_config(
            tok,
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=23,
            hidden_act="gelu",
            projection_dim=512,
        )
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
            sample_size=64,
        )
    if v1:
        scheduler = DPMSolverMultistepScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", algorithm_type="dpmsolver++"
        )
    else:
        scheduler = EulerDiscreteScheduler(**_SCHEDULER)
    return StableDiffusionPipeline(
        vae=_vae(tiny, 0.18215),
        text_encoder=CLIPTextModel(text),
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl_unet(tiny: bool, refiner: bool = False):
    """SDXL's UNet; the refiner's is wider, attends to one text encoder and adds an aesthetic score to its time ids."""
    from diffusers import UNet2DConditionModel

    time_ids = 5 if refiner else 6
    if tiny:
        return UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=48 if refiner else 80,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=time_ids * 8 + 32,
            use_linear_projection=True,
            norm_num_groups=16,
            sample_size=64,
        )
    if refiner:
        return UNet2DConditionModel(
            block_out_channels=(384, 768, 1536, 1536),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(6, 12, 24, 24),
            transformer_layers_per_block=4,
            cross_attention_dim=1280,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2560,
            use_linear_projection=True,
            sample_size=128,
        )
    return UNet2DConditionModel(
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        use_linear_projection=True,
        sample_size=64,
    )


def _sdxl_text_encoders(tiny: bool):
    """SDXL's CLIP ViT-L and OpenCLIP bigG (with projection) text encoders and their tokenizers."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = make_tokenizer(pad_token="<|endoftext|>")
    tok_2 = make_tokenizer(pad_token="!")
    if tiny:
        # Two encoders of different widths, so a swapped concatenation cannot go unnoticed.
        text = _text_config(
            tok, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, hidden_act="gelu"
        )
        text_2 = _text_config(
            tok_2,
            hidden_size=48,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=3,
            hidden_act="gelu",
            projection_dim=32,
        )
    else:
        text = _text_config(
            tok,
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
        text_2 = _text_config(
            tok_2,
            vocab_size=49408,
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=20,
            num_hidden_layers=32,
            hidden_act="gelu",
            projection_dim=1280,
        )
    return CLIPTextModel(text), tok, CLIPTextModelWithProjection(text_2), tok_2


def _sdxl(tiny: bool, guided: bool = False):
    """SDXL-Turbo, or with guided SDXL base 1.0 (Euler with "leading" spacing, as it ships)."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet, vae = _sdxl_unet(tiny), _vae(tiny, 0.13025)  # created in this order, as in every earlier version
    text, tok, text_2, tok_2 = _sdxl_text_encoders(tiny)
    if guided:
        scheduler = EulerDiscreteScheduler(**{**_SCHEDULER, "timestep_spacing": "leading"})
    else:
        scheduler = EulerAncestralDiscreteScheduler(**_SCHEDULER)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=tok,
        tokenizer_2=tok_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _sdxl_refiner(tiny: bool):
    """The SDXL refiner: an image-to-image pipeline with the OpenCLIP bigG text encoder only."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    unet, vae = _sdxl_unet(tiny, refiner=True), _vae(tiny, 0.13025)
    _, _, text_2, tok_2 = _sdxl_text_encoders(tiny)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_2,
        tokenizer=None,
        tokenizer_2=tok_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**{**_SCHEDULER, "timestep_spacing": "leading"}),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def _taesd(tiny: bool):
    """TAESD, the tiny autoencoder (diffusers' AutoencoderTiny) that stands in for the SD and SDXL VAEs; TAESD and
    TAESDXL share this architecture and differ in weights only."""
    import torch
    from diffusers import AutoencoderTiny

    if tiny:
        vae = AutoencoderTiny(
            encoder_block_out_channels=(16, 16, 16, 16),
            decoder_block_out_channels=(16, 16, 16, 16),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
        )
    else:
        vae = AutoencoderTiny()
    # Random layers output about 0, which the decoder maps to black; centre its last layer on grey, with contrast.
    last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(5.0)
        last.bias.add_(0.5)
    return vae


# name -> (family, builder); TINY_VAE marks an AutoencoderTiny, used with turbo-export --vae
REPLICAS: dict[str, tuple[str, Callable]] = {
    "tiny-taesd": (TINY_VAE, lambda: _taesd(tiny=True)),
    "taesd-arch": (TINY_VAE, lambda: _taesd(tiny=False)),
    "tiny-sd-turbo": ("sd-turbo", lambda: _sd(tiny=True)),
    "tiny-sdxl-turbo": ("sdxl-turbo", lambda: _sdxl(tiny=True)),
    "tiny-small-sd": ("sd1", lambda: _sd(tiny=True, v1=True)),
    "tiny-sdxl": ("sdxl", lambda: _sdxl(tiny=True, guided=True)),
    "tiny-sdxl-refiner": ("sdxl-refiner", lambda: _sdxl_refiner(tiny=True)),
    "sd-turbo-arch": ("sd-turbo", lambda: _sd(tiny=False)),
    "sdxl-turbo-arch": ("sdxl-turbo", lambda: _sdxl(tiny=False)),
    "small-sd-arch": ("sd1", lambda: _sd(tiny=False, v1=True)),
    "sdxl-arch": ("sdxl", lambda: _sdxl(tiny=False, guided=True)),
    "sdxl-refiner-arch": ("sdxl-refiner", lambda: _sdxl_refiner(tiny=False)),
}


def build_pipeline(name: str):
    """The replica as an in-memory diffusers pipeline (float32, eval mode), deterministic from SEED."""
    import torch

    _, builder = REPLICAS[name]
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        pipe = builder()
    if hasattr(pipe, "set_progress_bar_config"):  # a pipeline, not a lone VAE
        pipe.set_progress_bar_config(disable=True)
    return pipe


def replica_path(name: str) -> Path:
    """The replica's diffusers folder (a pipeline, or a lone VAE) in the cache, built on first use."""
    target = cache_root() / "replicas" / f"{name}-v{REPLICA_VERSION}"
    if (target / "replica.json").is_file():  # written last, so the folder is complete
        return target
    log.info("building replica %s in %s", name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as transformers_logging

    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    bars = transformers_logging.is_progress_bar_enabled()
    try:
        transformers_logging.disable_progress_bar()  # "Writing model shards" for a few small files
        build_pipeline(name).save_pretrained(tmp, safe_serialization=True)
        (tmp / "replica.json").write_text(json.dumps({"replica": name, "version": REPLICA_VERSION, "seed": SEED}))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "replica.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
    return target
