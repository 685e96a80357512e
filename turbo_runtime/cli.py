"""turbo-run: generate images from exported artifacts (or a model, exported on first use) on any backend."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from turbo_runtime.auto import AUTO
from turbo_runtime.backends import BACKENDS
from turbo_runtime.backends.base import DTYPES
from turbo_runtime.errors import InputError, TurboError
from turbo_runtime.pipeline import MAX_IMAGES, SEED_BOUND
from turbo_runtime.sampler import SCHEDULERS
from turbo_runtime.spec import PRECISIONS


def cli_errors(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Turn project errors into one line on stderr and their exit code (2 for bad input), no traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except TurboError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    if not verbose:  # transformers and diffusers print notices about optional packages at import
        for lib in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(lib, "error")
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """What to load and how to run it: the flags turbo-run and turbo-serve share."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--artifacts", type=Path, help="folder written by turbo-export")
    src.add_argument("--model", help="replica name, hub id in models.lock or diffusers folder (exported on first use)")
    p.add_argument(
        "--backend",
        default=AUTO,
        help=f"{AUTO} or one of: {', '.join(BACKENDS)} (default {AUTO}: the first of openvino, onnxruntime, torch "
        "installed that reads the artifacts; --verbose says why)",
    )
    p.add_argument("--device", help="torch: cpu|cuda; onnxruntime: cpu|cuda|openvino; openvino: CPU|GPU|NPU|AUTO")
    p.add_argument("--dtype", help=f"inference precision: {', '.join(DTYPES)} (default: the backend's best)")
    p.add_argument("--threads", type=int, help="CPU threads of the engine")
    p.add_argument(
        "--precision",
        choices=(AUTO, *PRECISIONS),
        default=AUTO,
        help=f"with --model: export precision (default {AUTO}: the fastest at full quality for this CPU's class)",
    )
    p.add_argument("--vae", help="with --model: a tiny VAE instead of the model's ('tiny': TAESD or TAESDXL)")
    p.add_argument(
        "--height", type=int, help="with --model: the export's (default: the model's); else the exported one"
    )
    p.add_argument("--width", type=int, help="with --model: the export's (default: the model's); else the exported one")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turbo-run", description=__doc__)
    add_pipeline_arguments(p)
    p.add_argument("--prompt", required=True, help="text prompt (may be empty)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seed", type=int, help=f"noise seed, 0 to {SEED_BOUND - 1} (default: random, saved in the PNG)")
    p.add_argument("--num-images", type=int, default=1, help=f"images to generate, at most {MAX_IMAGES} (default 1)")
    p.add_argument("--negative-prompt", help="what to steer away from (guided models, guidance scale above 1)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        help="classifier-free guidance (default: the model's: 0 for turbo models, 7.5 for SD 1.x, 5 for SDXL)",
    )
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale in [0, 1] (default 0)")
    p.add_argument("--scheduler", help=f"one of: {', '.join(SCHEDULERS)} (default: the model's)")
    p.add_argument("--refiner", help="SDXL refiner (artifacts folder or model) for the base's last steps")
    p.add_argument(
        "--high-noise-frac", type=float, help="with --refiner: share of the schedule the base denoises (default 0.8)"
    )
    p.add_argument("--no-watermark", action="store_true", help="no invisible watermark on SDXL images")
    p.add_argument("--image", type=Path, help="init image for image-to-image")
    p.add_argument("--strength", type=float, help="image-to-image strength in (0, 1] (default 0.5)")
    p.add_argument(
        "--out", default="image.png", help="PNG path, folders created as needed; NAME-0.png... for several images"
    )
    p.add_argument("--verbose", action="store_true", help="log progress and per-stage timings")
    p.add_argument("--quiet", action="store_true", help="no progress bar, errors only")
    return p


def _save_png(image, path: Path, text: dict[str, str]) -> None:
    """Write through a temporary file so a failure never leaves a partial PNG."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def out_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(n)]


def check_out(out: str, n: int) -> list[Path]:
    """The PNG paths --out names for n images, refused before any model is loaded if they cannot be written.

    Missing folders are created when the images are saved, as `mkdir -p` would."""
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.name in ("", "..") or path.is_dir():
        raise InputError(f"--out {out} is a folder; name a PNG file in it, e.g. {path / 'image.png'}")
    if path.suffix.lower() not in (".png", ""):
        raise InputError(f"--out must name a .png file, got {out}")
    paths = out_paths(path, n)
    for p in paths:
        if p.is_dir():
            raise InputError(f"cannot write {p}: a folder of that name exists")
    folder = path.parent
    while not os.path.lexists(folder):  # the nearest folder that exists, where the missing ones will be made
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {out}: {folder} is not a folder")
    try:  # the question the save will ask, with a file nobody sees (removed at once, or never linked)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise InputError(f"cannot write {out}: no file can be created in {folder} ({e.strerror})") from None
    return paths


def _load(value: str | Path, args, backend_options: dict, artifacts: bool):
    """Artifacts folder or model (exported on first use at --height/--width, default the family's size)."""
    from turbo_runtime.pipeline import TurboPipeline

    if artifacts:
        return TurboPipeline.from_artifacts(value, args.backend, **backend_options)
    size = dict(height=args.height, width=args.width)
    return TurboPipeline.from_model(
        str(value), args.backend, precision=args.precision, quiet=args.quiet, vae=args.vae, **size, **backend_options
    )


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    from turbo_runtime.artifacts import MANIFEST, Artifacts
    from turbo_runtime.auto import check_names
    from turbo_runtime.backends import backend_class
    from turbo_runtime.pipeline import Request, check_refiner, image_text

    check_names(args.backend, args.precision, args.device)
    if args.backend != AUTO:
        backend_class(args.backend)  # an unknown backend or a missing package fails before any export or load
    if args.image is not None and not args.image.is_file():
        raise InputError(f"init image {args.image} does not exist")
    if args.vae and not args.model:
        raise InputError("--vae is an export option, for --model; artifacts keep the VAE they were exported with")
    if args.high_noise_frac is not None and not args.refiner:
        raise InputError("--high-noise-frac applies with --refiner only")
    high_noise_frac = 0.8 if args.high_noise_frac is None else args.high_noise_frac
    options = dict(device=args.device, dtype=args.dtype, threads=args.threads)
    request = Request(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        guidance_rescale=args.guidance_rescale,
        has_image=args.image is not None,
        strength=args.strength,
        num_images=args.num_images,
        height=args.height,
        width=args.width,
        scheduler=args.scheduler,
        seed=args.seed,
    )
    request.check_values()
    paths = check_out(args.out, args.num_images)
    # With --artifacts (and a refiner folder) the request is checked before any model is compiled.
    pipe = refiner = None
    own = {**options, "vae_encoder": args.image is not None}  # text-to-image loads no VAE encoder
    if args.model:
        pipe = _load(args.model, args, own, artifacts=False)
    artifacts = pipe.artifacts if pipe else Artifacts.load(args.artifacts)
    request = request.resolved(artifacts.family)
    request.check(artifacts)
    if args.refiner:
        is_folder = (Path(args.refiner) / MANIFEST).is_file()
        if is_folder:  # before its models are compiled
            check_refiner(artifacts, Artifacts.load(args.refiner), request, high_noise_frac)
        refiner = _load(args.refiner, args, options, artifacts=is_folder)
    if pipe is None:
        pipe = _load(args.artifacts, args, own, artifacts=True)
    for p in (pipe, refiner):
        if p is not None:
            p.progress = not args.quiet
            p.one_shot = True  # one call: each component's memory is freed once the call is done with it
    choice = pipe.choice
    log = logging.getLogger("turbo-run")
    log.info(
        "cpu class: %s; backend %s, precision %s (computing in %s): %s",
        choice.cpu,
        choice.backend,
        choice.precision,
        pipe.backend.inference_precision,
        choice.reason,
    )
    result = pipe(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        guidance_rescale=args.guidance_rescale,
        seed=args.seed,
        image=args.image,
        strength=request.strength,
        num_images_per_prompt=args.num_images,
        height=args.height,
        width=args.width,
        scheduler=args.scheduler,
        refiner=refiner,
        high_noise_frac=high_noise_frac,
        watermark=False if args.no_watermark else None,
    )
    meta = image_text(request, result.seed, result.steps, pipe.artifacts.model_id, pipe.backend.name)
    meta["cpu_class"] = choice.cpu.name
    if choice.chose:  # what auto picked and why; a given backend and precision speak for themselves
        meta["choice"] = str(choice)
    if refiner is not None:
        meta.update(refiner=refiner.artifacts.model_id, high_noise_frac=str(high_noise_frac))
    for image, path in zip(result.images, paths):
        _save_png(image, path, meta)
    t = result.timings
    log.info(
        "text %.3f s, unet %s s, vae decode %.3f s, total %.3f s",
        t["text_encoder"],
        " + ".join(f"{s:.3f}" for s in t["unet"] + t.get("refiner_unet", [])),
        t.get("refiner_vae_decoder", t.get("vae_decoder", 0.0)),
        t["total"],
    )
    if not args.quiet:
        print(*paths, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
