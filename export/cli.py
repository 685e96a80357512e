"""turbo-export: convert a model's components to ONNX and OpenVINO IR, check them against PyTorch, write a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from turbo_runtime.auto import AUTO
from turbo_runtime.cli import cli_errors, setup_logging
from turbo_runtime.spec import FAMILIES, FORMATS, PRECISIONS, TINY_VAE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turbo-export", description=__doc__)
    p.add_argument(
        "model", metavar="MODEL", help="hub id in models.lock, diffusers folder, or replica (tiny-sd-turbo, ...)"
    )
    p.add_argument(
        "--out", type=Path, help="artifacts folder (default: in the cache, keyed by model, shape, precision)"
    )
    p.add_argument(
        "--format",
        nargs="+",
        default=None,
        metavar="FMT",
        help=f"{' '.join(FORMATS)} (default: both; with --precision auto, the chosen backend's)",
    )
    p.add_argument(
        "--precision",
        default=AUTO,
        metavar="P",
        help=f"{AUTO} | {' | '.join(PRECISIONS)} (default {AUTO}: the fastest at full quality for this CPU's class, "
        "shown with --verbose)",
    )
    p.add_argument("--height", type=int, help="image height (default: the model's, 1024 for SDXL base, else 512)")
    p.add_argument("--width", type=int, help="image width (default: the model's)")
    p.add_argument(
        "--vae",
        metavar="VAE",
        help="replace the model's VAE by a tiny one (AutoencoderTiny): 'tiny' (TAESD, or TAESDXL for SDXL models), "
        "or a replica, hub id or folder",
    )
    p.add_argument(
        "--unet-batch",
        type=int,
        default=1,
        help="2: the UNet takes both branches of classifier-free guidance in one call (guided models; default 1)",
    )
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds something else")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (can run code)")
    p.add_argument(
        "--update-lock", action="store_true", help="resolve MODEL on the hub and write its models.lock entry"
    )
    p.add_argument(
        "--family",
        choices=[*FAMILIES, TINY_VAE],
        help=f"family of a folder whose files do not tell it, or with --update-lock of a new entry ({TINY_VAE}: "
        "a tiny autoencoder for --vae)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, only errors and the artifacts path")
    p.add_argument("--verbose", action="store_true")
    return p


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.update_lock:
        from export.sources import update_lock

        entry = update_lock(args.model, family=args.family, allow_pickle=args.allow_pickle)
        print(f"models.lock: {args.model} at {entry['revision']} ({len(entry['files'])} files pinned)")
        return 0
    from export.exporter import ExportConfig, export_model

    config = ExportConfig(
        args.model,
        out=args.out,
        formats=tuple(args.format) if args.format else None,
        precision=args.precision,
        height=args.height,
        width=args.width,
        force=args.force,
        allow_pickle=args.allow_pickle,
        family=args.family,
        unet_batch=args.unet_batch,
        vae=args.vae,
        quiet=args.quiet,
    )
    out = export_model(config)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
