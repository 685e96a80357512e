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

from turbo_runtime.backends import BACKENDS
from turbo_runtime.backends.base import DTYPES
from turbo_runtime.errors import InputError, TurboError
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turbo-run", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--artifacts", type=Path, help="folder written by turbo-export")
    src.add_argument("--model", help="replica name, hub id in models.lock or diffusers folder (exported on first use)")
    p.add_argument("--backend", default="openvino", help=f"one of: {', '.join(BACKENDS)} (default: openvino)")
    p.add_argument("--prompt", required=True, help="text prompt (may be empty)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: random, saved in the PNG)")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=0.0, help="must be 0 for turbo models")
    p.add_argument("--image", type=Path, help="init image for image-to-image")
    p.add_argument("--strength", type=float, help="image-to-image strength in (0, 1] (default 0.5)")
    p.add_argument("--height", type=int, help="must match the exported shape (with --model: export shape)")
    p.add_argument("--width", type=int, help="must match the exported shape (with --model: export shape)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="with --model: export precision")
    p.add_argument("--device", help="torch: cpu|cuda; onnxruntime: cpu|cuda; openvino: CPU|GPU|NPU|AUTO")
    p.add_argument("--dtype", help=f"inference precision: {', '.join(DTYPES)} (default: the backend's best)")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--out", type=Path, default=Path("image.png"), help="PNG path; NAME-1.png... for several images")
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


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    from turbo_runtime.artifacts import Artifacts
    from turbo_runtime.backends import backend_class
    from turbo_runtime.pipeline import TurboPipeline, check_request, request_defaults

    backend_class(args.backend)  # an unknown backend or a missing package fails before any export or load
    if args.image is not None and not args.image.is_file():
        raise InputError(f"init image {args.image} does not exist")
    if args.out.suffix.lower() not in (".png", ""):
        raise InputError(f"--out must name a .png file, got {args.out}")
    options = dict(device=args.device, dtype=args.dtype, threads=args.threads)
    has_image = args.image is not None
    if args.model:
        size = dict(height=args.height or 512, width=args.width or 512)
        pipe = TurboPipeline.from_model(
            args.model, args.backend, precision=args.precision, quiet=args.quiet, **size, **options
        )
        artifacts = pipe.artifacts
    else:
        artifacts = Artifacts.load(args.artifacts)
    steps, strength = request_defaults(artifacts.family, args.steps, has_image, args.strength)
    check_request(artifacts, steps, args.guidance_scale, strength, has_image, args.num_images, args.height, args.width)
    if not args.model:
        pipe = TurboPipeline.from_artifacts(args.artifacts, args.backend, **options)
    result = pipe(
        prompt=args.prompt,
        num_inference_steps=steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        image=args.image,
        strength=strength,
        num_images_per_prompt=args.num_images,
        height=args.height,
        width=args.width,
    )
    meta = {
        "prompt": args.prompt,
        "seed": str(result.seed),
        "steps": str(result.steps),
        "model": pipe.artifacts.model_id,
        "backend": args.backend,
        "software": "turbo-runtime",
    }
    if has_image:
        meta["strength"] = str(strength)
    paths = out_paths(args.out, len(result.images))
    for image, path in zip(result.images, paths):
        _save_png(image, path, meta)
    t = result.timings
    logging.getLogger("turbo-run").info(
        "text %.3f s, unet %s s, vae decode %.3f s, total %.3f s",
        t["text_encoder"],
        " + ".join(f"{s:.3f}" for s in t["unet"]),
        t["vae_decoder"],
        t["total"],
    )
    if not args.quiet:
        print(*paths, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
