"""turbo-export's work: resolve the source, trace every component, check it, write artifacts atomically."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib.util
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from turbo_runtime.artifacts import FORMAT_VERSION, MANIFEST, Artifacts
from turbo_runtime.auto import AUTO, export_choice
from turbo_runtime.errors import ArtifactError, InputError, MissingDependency, TurboError
from turbo_runtime.files import cache_root, sha256_files
from turbo_runtime.spec import FORMATS, PRECISIONS, check_size, component_io, default_formats

log = logging.getLogger(__name__)

CHECK_PROMPT = "a photograph of an astronaut riding a horse"
# Bumped whenever the exported graphs change for the same source (e.g. a new rewrite): artifacts written by an
# older exporter are rebuilt instead of reused.
EXPORTER_REVISION = 8
_EXPORT_EXTRA = 'pip install "turbo-runtime[export]"'
_FORMAT_PACKAGES = {"onnx": ("onnx", "onnxruntime"), "openvino": ("openvino",)}


@dataclass(frozen=True)
class ExportConfig:
    model: str
    out: Path | None = None  # default: a folder in the cache keyed by model, shape and precision
    formats: tuple[str, ...] | None = None  # None: the precision's default formats; with auto, the chosen backend's
    precision: str = AUTO  # one of PRECISIONS, or auto: the fastest full-quality one for this CPU (turbo_runtime.auto)
    height: int | None = None  # default: the family's size (1024 for SDXL base and refiner, else 512)
    width: int | None = None
    force: bool = False  # replace an output folder that holds something other than artifacts
    allow_pickle: bool = False
    family: str | None = None  # for a folder whose family cannot be told from its files
    unet_batch: int = 1  # 2: the UNet takes both branches of classifier-free guidance in one call
    vae: str | None = None  # a tiny VAE instead of the model's: "tiny" or a replica, hub id or folder
    quiet: bool = False


def resolve_precision(config: ExportConfig) -> ExportConfig:
    """The config with a concrete precision and formats: `auto` resolved for this CPU, the choice logged."""
    if config.precision != AUTO:
        formats = default_formats(config.precision) if config.formats is None else config.formats
        return replace(config, formats=formats)
    choice, formats = export_choice(config.formats)
    log.info(
        "cpu class: %s; precision %s for %s: %s", choice.cpu, choice.precision, " and ".join(formats), choice.reason
    )
    return replace(config, precision=choice.precision, formats=formats)


def check_config(config: ExportConfig) -> None:
    if config.height is not None or config.width is not None:
        check_size(config.height or 512, config.width or 512)
    unknown = [f for f in config.formats if f not in FORMATS]
    if unknown:
        raise InputError(f"unknown format {unknown[0]!r}; choose from: {', '.join(FORMATS)}")
    if config.precision not in PRECISIONS:
        raise InputError(f"unknown precision {config.precision!r}; choose from: {', '.join((AUTO, *PRECISIONS))}")
    if config.unet_batch not in (1, 2):
        raise InputError(f"--unet-batch must be 1 or 2, got {config.unet_batch}")
    if config.precision == "int8-hybrid" and "onnx" in config.formats:
        raise InputError(f"{config.precision} is made for OpenVINO only (NNCF); use --format openvino")


def _require(*modules: str) -> None:
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or blocked install
            found = False
        if not found:
            raise MissingDependency(f"turbo-export needs the {name} package: {_EXPORT_EXTRA}")


def _slug(model: str) -> str:
    return model.strip("/").replace("/", "--") if not Path(model).is_dir() else Path(model).resolve().name


def default_out(
    model: str, height: int, width: int, precision: str, unet_batch: int = 1, vae: str | None = None
) -> Path:
    variant = (f"-unet{unet_batch}" if unet_batch != 1 else "") + (f"-vae-{_slug(vae)}" if vae else "")
    return cache_root() / "artifacts" / _slug(model) / f"{height}x{width}-{precision}{variant}"


def _component_precision(component: str, fmt: str, precision: str, tiny_vae: bool) -> str:
    if precision == "int8-hybrid":  # int8 weights for what it does not quantize in its activations
        return precision if _quantized(component, tiny_vae) else "int8"
    if _calibrated(component, fmt, precision, tiny_vae):
        return "int8"
    # SD 2.x and SDXL VAEs overflow in float16 activations: the fp16 ONNX graph keeps the VAE in fp32. The int8
    # ONNX graph quantizes matrix multiplications, of which a VAE (all convolutions) has next to none.
    if fmt == "onnx" and precision in ("fp16", "int8") and component.startswith("vae"):
        return "fp32"
    # OpenVINO's int8 is its full-quality fp16 export with the decoder's convolutions in int8: int8 weights alone
    # are decompressed at every call, slower than fp16 ones converted once (benchmarks/README.md, AMX fast path).
    if fmt == "openvino" and precision == "int8":
        return "fp16"
    return precision


def _calibrated(component: str, fmt: str, precision: str, tiny_vae: bool) -> bool:
    """Whether the component is quantized with activation ranges recorded from the pipeline once every component
    is exported (traced in float32 until then): int8-hybrid's (OpenVINO), and int8's VAE decoder, the model's own
    (a tiny VAE's is not quantized), with its convolutions quantized by ONNX Runtime's quantizer for both formats."""
    if precision == "int8-hybrid":
        return _quantized(component, tiny_vae)
    return precision == "int8" and component == "vae_decoder" and not tiny_vae


def _quantized(component: str, tiny_vae: bool) -> bool:
    """What int8-hybrid quantizes in weights and activations: the text encoders, the UNet and a tiny VAE's decoder.
    The rest gets int8 weights: the model's own VAE decoder drifts further in int8 than all of those together."""
    return component.startswith("text_encoder") or component == "unet" or (tiny_vae and component == "vae_decoder")


def _reusable(out: Path, source_hash: str, vae_hash: str | None, config: ExportConfig) -> bool:
    """Existing artifacts of this exporter revision from the same source (and VAE), shape and precision, with every
    requested format, intact."""
    try:
        art = Artifacts.load(out)
        m = art.manifest
        same = (
            m.get("exporter_revision") == EXPORTER_REVISION
            and m["model"]["source_hash"] == source_hash
            and (m.get("vae") or {}).get("source_hash") == vae_hash
            and (m["height"], m["width"], m["precision"]) == (config.height, config.width, config.precision)
            and m.get("batch", 1) == config.unet_batch
            and set(config.formats) <= set(m["formats"])
        )
        if same:
            for fmt in config.formats:
                art.verify(fmt)
        return same
    except (TurboError, KeyError):
        return False


def _tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("turbo-runtime", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _save_tokenizer(tok, dest: Path) -> None:
    """One tokenizer.json (HF fast format) with truncation and padding to the model length built in."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.enable_truncation(max_length=tok.model_max_length)
    backend.enable_padding(length=tok.model_max_length, pad_id=tok.pad_token_id, pad_token=tok.pad_token)
    dest.mkdir(parents=True)
    backend.save(str(dest / "tokenizer.json"))


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2); False where the system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _aside(tmp: Path) -> Path:
    """Where the old artifacts go while `tmp` replaces them, where they cannot be swapped in one step."""
    return tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))


def _install(tmp: Path, out: Path) -> None:
    """Put the finished folder at `out`; the caller then removes `tmp` (and its `_aside`).

    An existing `out` is swapped with `tmp` in one step, so that a process killed at any moment leaves the old
    or the new artifacts there, never neither; `tmp` then holds the old ones. Where the system cannot swap, the
    old folder is renamed aside first, under a name the next export removes.
    """
    if out.exists() and not _exchange(tmp, out):
        out.rename(_aside(tmp))
    if not out.exists():
        tmp.rename(out)


_FULL = 1 << 20  # a disk with fewer free bytes counts as full


def _no_room(e: BaseException, tmp: Path) -> str | None:
    """Why writing into `tmp` failed if it ran out of room (disk, quota, file size limit), else None.

    Some writers do not pass the system's error on (tokenizers), so where the error does not tell, the disk and
    the files written so far do."""
    free = shutil.disk_usage(tmp).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    limited = limit != resource.RLIM_INFINITY
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason = e.strerror
    elif free < _FULL:
        reason = os.strerror(errno.ENOSPC)
    elif limited and any(p.stat().st_size >= limit for p in tmp.rglob("*") if p.is_file()):
        reason = os.strerror(errno.EFBIG)
    else:
        return None
    room = f"{_size(free)} free in {tmp.parent}" + (f", file size limit {_size(limit)}" if limited else "")
    return f"{reason} ({room})"


def _size(n: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def export_model(config: ExportConfig) -> Path:
    """Export `config.model`; returns the artifacts folder (reused when source, shape and precision match).

    `--precision auto` is resolved first, so the folder and the manifest carry the concrete precision."""
    config = resolve_precision(config)
    check_config(config)
    _require("torch", "diffusers", "transformers")
    for fmt in config.formats:
        _require(*_FORMAT_PACKAGES[fmt])
    if config.precision == "int8-hybrid":
        _require("nncf")
    if config.precision == "int8" and "openvino" in config.formats:  # ONNX Runtime's quantizer makes its decoder
        _require(*_FORMAT_PACKAGES["onnx"])
    from export.sources import resolve, resolve_vae

    source = resolve(config.model, allow_pickle=config.allow_pickle, family=config.family)
    vae = resolve_vae(config.vae, source, config.allow_pickle) if config.vae else None
    if config.unet_batch == 2 and not source.family.guided:
        raise InputError(f"--unet-batch 2 is for classifier-free guidance, which {source.family.name} does not use")
    size = source.family.default_size
    config = replace(config, height=config.height or size, width=config.width or size)
    vae_id = vae.model_id if vae else None
    out = config.out or default_out(
        config.model, config.height, config.width, config.precision, config.unet_batch, vae_id
    )
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # One export per target at a time: a second one waits, then finds the first one's artifacts reusable.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Left by a killed export; also when the artifacts are reused (one killed while it removed the old
        # artifacts it had swapped out leaves a whole copy of them).
        for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
            for stale in out.parent.glob(pattern):
                _remove(stale)
        if _reusable(out, source.source_hash, vae.source_hash if vae else None, config):
            log.info("reusing artifacts in %s (same source, shape and precision)", out)
            return out
        foreign = out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir()))
        if foreign and not config.force:
            raise ArtifactError(f"{out} exists and does not hold turbo-runtime artifacts; pass --force to replace it")
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would keep the installed folder from other users
        try:
            # NNCF draws its progress on stdout, which is the caller's (turbo-export's carries the artifacts path).
            with open(os.devnull, "w") if config.quiet else contextlib.nullcontext(sys.stderr) as progress:
                with contextlib.redirect_stdout(progress):
                    manifest = _export_into(tmp, source, vae, config)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _install(tmp, out)
        except Exception as e:
            if isinstance(e, TurboError) or (reason := _no_room(e, tmp)) is None:
                raise
            raise ArtifactError(
                f"cannot write the artifacts for {out}: {reason}; nothing was installed: make room or choose "
                "another --out"
            ) from None
        finally:
            _remove(tmp)  # the unfinished folder, or the old artifacts swapped out of place
            _remove(_aside(tmp))
    return out


def _umask() -> int:
    """The process' umask, read without setting it (os.umask would change it for every thread meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _onnx_aside(tmp: Path, component: str) -> Path:
    """Where the float32 ONNX graph of an OpenVINO component quantized by ONNX Runtime's quantizer waits for it."""
    return tmp / f".{component}-onnx"


def _export_into(tmp: Path, source, vae, config: ExportConfig) -> dict:
    import numpy as np
    from tqdm import tqdm

    from export.to_onnx import export_onnx
    from export.to_openvino import export_openvino, ir_from_onnx
    from export.verify import check_component, example_inputs
    from export.wrappers import load_model

    family = source.family
    model = load_model(source.path, family, source.variant, vae_path=vae.path if vae else None)
    io = component_io(family, model.dims, config.height, config.width, config.unet_batch)
    for name, tok in model.tokenizers.items():
        _save_tokenizer(tok, tmp / name)
    first_tokenizer = model.tokenizers[family.tokenizers[0]]
    ids = np.asarray([first_tokenizer(CHECK_PROMPT, padding="max_length", truncation=True).input_ids])
    components: dict[str, dict] = {}
    checks: dict[str, tuple] = {}  # what check_component needs, per component
    steps = [(c, f) for c in family.components for f in config.formats]
    with tqdm(total=len(steps), desc="export", unit="step", disable=config.quiet, leave=False) as bar:
        for component in family.components:
            module, cio = model.modules[component], io[component]
            example = example_inputs(cio, ids, config.height, config.width)
            files, paths, precision = {}, {}, {}
            for fmt in config.formats:
                bar.set_description(f"{component}: {fmt}")
                precision[fmt] = _component_precision(component, fmt, config.precision, vae is not None)
                calibrated = _calibrated(component, fmt, config.precision, vae is not None)
                if fmt == "onnx":
                    traced = "fp32" if calibrated else precision[fmt]
                    written = export_onnx(module, example, cio, tmp / "onnx" / component, traced)
                elif calibrated and config.precision == "int8":
                    # The float32 ONNX graph, which ONNX Runtime's quantizer takes, kept aside until it has been
                    # calibrated; until then the IR is its float32 conversion. With OpenVINO's group norms: the
                    # int8 decoder 7 % faster (benchmarks/README.md).
                    aside = _onnx_aside(tmp, component)
                    onnx_file = export_onnx(module, example, cio, aside, "fp32", group_norm=True)[0]
                    written = ir_from_onnx(onnx_file, cio, tmp / "openvino" / f"{component}.xml")
                else:
                    written = export_openvino(
                        module, example, cio, tmp / "openvino" / f"{component}.xml", precision[fmt]
                    )
                files[fmt] = [str(p.relative_to(tmp)) for p in written]
                paths[fmt] = written[0]
                bar.update(1)
            components[component] = {
                "inputs": [t.to_dict() for t in cio.inputs],
                "outputs": [t.to_dict() for t in cio.outputs],
                "files": files,
                "precision": precision,
            }
            checks[component] = (module, example, cio, paths, precision)
            if any(_calibrated(component, f, config.precision, vae is not None) for f in precision):
                continue  # checked once quantized, below
            bar.set_description(f"{component}: check")
            components[component]["parity"] = check_component(component, *checks[component])

    def manifest() -> dict:
        all_files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        return {
            "format_version": FORMAT_VERSION,
            "exporter_revision": EXPORTER_REVISION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": source.to_dict(),
            "vae": vae.to_dict() if vae else None,  # a tiny VAE in place of the model's
            "family": family.name,
            "height": config.height,
            "width": config.width,
            "batch": config.unet_batch,  # the UNet's; every other component takes one image
            "precision": config.precision,
            "formats": list(config.formats),
            "dims": model.dims.to_dict(),
            "scheduler": model.scheduler_config,
            "pipeline": model.options,
            "tokenizers": list(family.tokenizers),
            "components": components,
            "tools": _tool_versions(),
            "files": dict(zip(all_files, sha256_files([tmp / f for f in all_files]))),
        }

    calibrated = {
        fmt: tuple(c for c in components if _calibrated(c, fmt, config.precision, vae is not None))
        for fmt in config.formats
    }
    if any(calibrated.values()):
        import torch

        from export.quantize import calibration_inputs, quantize, quantize_onnx_decoder

        # Calibrate on the pipeline's own inputs: run the artifacts written so far, then quantize. Each quantized
        # component is then checked on the first input the pipeline handed it, within the ranges it was calibrated
        # for (a random-weight replica's latents are far from unit-normal).
        (tmp / MANIFEST).write_text(json.dumps(manifest(), indent=2) + "\n")
        first: dict[str, dict] = {}
        for fmt, quantized in calibrated.items():
            if not quantized:
                continue
            log.info(
                "recording calibration inputs and quantizing %s (%s %s)", ", ".join(quantized), fmt, config.precision
            )
            backend = "openvino" if fmt == "openvino" else "onnxruntime"
            for component, dataset in calibration_inputs(tmp, quantized, backend, progress=not config.quiet).items():
                first[component] = dataset[0]
                xml = tmp / "openvino" / f"{component}.xml"
                if config.precision == "int8-hybrid":
                    quantize(xml, dataset, transformer=component != "vae_decoder")
                elif fmt == "openvino":
                    aside = _onnx_aside(tmp, component)
                    ir_from_onnx(quantize_onnx_decoder(aside / "model.onnx", dataset)[0], checks[component][2], xml)
                    shutil.rmtree(aside)
                else:
                    written = quantize_onnx_decoder(tmp / "onnx" / component / "model.onnx", dataset)
                    components[component]["files"]["onnx"] = [str(p.relative_to(tmp)) for p in written]
        (tmp / MANIFEST).unlink()
        for component, inputs in first.items():
            module, _, cio, paths, precision = checks[component]
            feed = tuple(torch.from_numpy(inputs[t.name]) for t in cio.inputs)
            components[component]["parity"] = check_component(component, module, feed, cio, paths, precision)
    return manifest()
