"""Model families: components, I/O names, static shapes, schedulers and defaults.

This is the one place where the shape of each component's inputs and outputs is defined. The export
writes what these functions return into the manifest; the runtime checks every call against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from turbo_runtime.errors import InputError

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
COMPONENTS = (*TEXT_ENCODERS, "unet", "vae_encoder", "vae_decoder")
FORMATS = ("onnx", "openvino")
# int8: the model's VAE decoder with int8 convolutions, calibrated, beside dynamically quantized matrix
# multiplications (ONNX) or fp16 weights (OpenVINO); int8-hybrid: int8 weights and the activations of the text
# encoders, the UNet and a tiny VAE's decoder, calibrated (OpenVINO)
PRECISIONS = ("fp32", "fp16", "int8", "int8-hybrid")


def default_formats(precision: str) -> tuple[str, ...]:
    """The formats an export writes unless told: both, or OpenVINO for the precision only NNCF makes."""
    return ("openvino",) if precision == "int8-hybrid" else FORMATS


# Export check: largest |exported - torch| allowed, relative to max(1, max|torch|), per precision.
# fp32 graphs differ from PyTorch only by kernel rounding; fp16 graphs and compressed weights drift more.
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 1.5e-1, "int8-hybrid": 3e-1}

MIN_SIZE = 64

# Switches of the saved pipeline, recorded in the manifest: SDXL's zeros instead of the encoded empty prompt as the
# unconditional branch, the refiner's aesthetic-score time ids, and the VAE's need to run in float32 where the rest
# runs in float16 (diffusers' force_upcast, true unless a VAE was fine-tuned for float16).
PIPELINE_OPTIONS = ("force_zeros_for_empty_prompt", "requires_aesthetics_score", "vae_force_upcast")


@dataclass(frozen=True)
class Family:
    name: str
    text_encoders: tuple[str, ...]
    scheduler: str  # our scheduler name to use when the model ships one we do not run
    default_steps: int
    default_size: int
    default_guidance: float  # 0 for distilled (turbo) families, which sample without classifier-free guidance
    pipeline_class: str  # diffusers pipeline class that saves this family
    needs_image: bool = False  # an image-to-image model only (the SDXL refiner)

    @property
    def guided(self) -> bool:
        return self.default_guidance > 0

    @property
    def tokenizers(self) -> tuple[str, ...]:
        return tuple(name.replace("text_encoder", "tokenizer") for name in self.text_encoders)

    @property
    def components(self) -> tuple[str, ...]:
        return (*self.text_encoders, "unet", "vae_encoder", "vae_decoder")

    @property
    def watermarked(self) -> bool:
        """diffusers' SDXL pipelines watermark their outputs when invisible-watermark is installed."""
        return self.pipeline_class.startswith("StableDiffusionXL")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd-turbo", ("text_encoder",), "euler", 1, 512, 0.0, "StableDiffusionPipeline"),
        Family("sdxl-turbo", TEXT_ENCODERS, "euler-ancestral", 1, 512, 0.0, "StableDiffusionXLPipeline"),
        # SD 1.x (and 2.x) checkpoints sampled with guidance, such as small-stable-diffusion-v0.
        Family("sd1", ("text_encoder",), "dpm++2m", 25, 512, 7.5, "StableDiffusionPipeline"),
        Family("sdxl", TEXT_ENCODERS, "euler", 30, 1024, 5.0, "StableDiffusionXLPipeline"),
        Family("sdxl-refiner", ("text_encoder_2",), "euler", 30, 1024, 5.0, "StableDiffusionXLImg2ImgPipeline", True),
    )
}


# What models.lock and the replicas call a tiny autoencoder (AutoencoderTiny: TAESD, TAESDXL), not a family.
TINY_VAE = "tiny-vae"


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}") from None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" or "int64"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


@dataclass(frozen=True)
class ComponentIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ModelDims:
    """The sizes a family's shapes depend on, read from the model's own configs at export."""

    text_length: int  # tokenizer max length (77 for CLIP)
    text_hidden: tuple[int, ...]  # hidden size of each text encoder's output used by the UNet
    pooled_dim: int | None  # text_encoder_2 projection size (SDXL), else None
    time_ids: int | None  # number of SDXL micro-conditioning values (6, or 5 with an aesthetic score), else None
    latent_channels: int
    vae_scale_factor: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelDims:
        return cls(**{**data, "text_hidden": tuple(data["text_hidden"])})


def check_size(height: int, width: int) -> None:
    for label, value in (("height", height), ("width", width)):
        if value < MIN_SIZE or value % 8:
            raise InputError(f"{label} must be a multiple of 8 and at least {MIN_SIZE}, got {value}")


def component_io(
    family: Family, dims: ModelDims, height: int, width: int, unet_batch: int = 1
) -> dict[str, ComponentIO]:
    """Static I/O of every component of `family` at the given image size: batch 1, and for the UNet `unet_batch`
    (2 takes the unconditional and the conditional branch of classifier-free guidance in one call)."""
    check_size(height, width)
    lat = (1, dims.latent_channels, height // dims.vae_scale_factor, width // dims.vae_scale_factor)
    b = unet_batch
    img = (1, 3, height, width)
    ids = TensorSpec("input_ids", (1, dims.text_length), "int64")
    f32 = "float32"
    io: dict[str, ComponentIO] = {}
    for name, hidden in zip(family.text_encoders, dims.text_hidden):
        outputs = [TensorSpec("hidden_states", (1, dims.text_length, hidden), f32)]
        if name == "text_encoder_2":
            outputs.append(TensorSpec("text_embeds", (1, dims.pooled_dim), f32))
        io[name] = ComponentIO((ids,), tuple(outputs))
    unet_inputs = [
        TensorSpec("sample", (b, *lat[1:]), f32),
        TensorSpec("timestep", (1,), f32),
        TensorSpec("encoder_hidden_states", (b, dims.text_length, sum(dims.text_hidden)), f32),
    ]
    if dims.time_ids is not None:
        unet_inputs += [
            TensorSpec("text_embeds", (b, dims.pooled_dim), f32),
            TensorSpec("time_ids", (b, dims.time_ids), f32),
        ]
    io["unet"] = ComponentIO(tuple(unet_inputs), (TensorSpec("noise_pred", (b, *lat[1:]), f32),))
    io["vae_encoder"] = ComponentIO((TensorSpec("image", img, f32),), (TensorSpec("latent", lat, f32),))
    io["vae_decoder"] = ComponentIO((TensorSpec("latent", lat, f32),), (TensorSpec("image", img, f32),))
    return io
