"""Resolve MODEL into a diffusers folder on disk plus the identity of every file the export reads.

MODEL is a hub id pinned in models.lock, a diffusers-format folder, or a built-in replica name.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from export.replicas import REPLICAS, replica_path
from turbo_runtime.errors import SourceError
from turbo_runtime.files import sha256_files, write_text_atomic
from turbo_runtime.spec import FAMILIES, TINY_VAE, Family, get_family

DEFAULT_LOCK = Path(__file__).resolve().parent.parent / "models.lock"


def lock_path() -> Path:
    """models.lock of this checkout, else the installed copy; TURBO_RUNTIME_LOCK points elsewhere (a private lock)."""
    if "TURBO_RUNTIME_LOCK" in os.environ:
        return Path(os.environ["TURBO_RUNTIME_LOCK"])
    installed = Path(sys.prefix) / "share" / "turbo-runtime" / "models.lock"
    return DEFAULT_LOCK if DEFAULT_LOCK.is_file() or not installed.is_file() else installed


# diffusers folder name of each component's weights; both VAE components read the "vae" folder.
_WEIGHT_DIRS = {
    "text_encoder": ("text_encoder", "model"),
    "text_encoder_2": ("text_encoder_2", "model"),
    "unet": ("unet", "diffusion_pytorch_model"),
    "vae_encoder": ("vae", "diffusion_pytorch_model"),
    "vae_decoder": ("vae", "diffusion_pytorch_model"),
    TINY_VAE: ("", "diffusion_pytorch_model"),  # a lone AutoencoderTiny keeps its files at the top level
}


@dataclass(frozen=True)
class Source:
    model_id: str  # as the user named it
    kind: str  # "hub" | "folder" | "replica"
    path: Path  # the diffusers folder
    family: Family | None  # None: a lone tiny VAE (AutoencoderTiny)
    variant: str | None  # "fp16" when only *.fp16.safetensors weights are present
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256, every file the export reads
    revision: str | None = None

    @property
    def source_hash(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}\0{self.files[name]}\n".encode())
        return h.hexdigest()

    def to_dict(self) -> dict:
        return {
            "id": self.model_id,
            "kind": self.kind,
            "path": str(self.path),
            "revision": self.revision,
            "variant": self.variant,
            "source_hash": self.source_hash,
            "files": self.files,
        }


def read_lock(path: Path | None = None) -> dict[str, dict]:
    path = path or lock_path()
    try:
        return tomllib.loads(path.read_text()).get("models", {})
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise SourceError(f"{path} is not valid TOML: {e}") from None


def known_models() -> list[str]:
    return [*REPLICAS, *read_lock()]


def _weights(folder: Path, component: str, allow_pickle: bool) -> tuple[list[str], str | None]:
    """Relative paths of a component's weight files (shards included) and the variant they belong to."""
    sub, stem = _WEIGHT_DIRS[component]
    d = folder / sub

    def rel(name: str) -> str:
        return f"{sub}/{name}" if sub else name

    candidates = [(f"{stem}.safetensors", None), (f"{stem}.fp16.safetensors", "fp16")]
    index_candidates = [(f"{stem}.safetensors.index.json", None), (f"{stem}.safetensors.index.fp16.json", "fp16")]
    if allow_pickle:
        candidates += [(f"{stem}.bin", None), (f"{stem}.fp16.bin", "fp16")]
        index_candidates += [(f"{stem}.bin.index.json", None), (f"{stem}.bin.index.fp16.json", "fp16")]
    for name, variant in candidates:
        if (d / name).is_file():
            return [rel(name)], variant
    for name, variant in index_candidates:
        if (d / name).is_file():
            shards = sorted(set(json.loads((d / name).read_text())["weight_map"].values()))
            return [rel(name), *(rel(s) for s in shards)], variant
    if not allow_pickle and any(d.glob(f"{stem}*.bin")):
        raise SourceError(
            f"{d} holds only pickled .bin weights, which can run code when loaded; "
            "convert them to safetensors or pass --allow-pickle if you trust the source"
        )
    raise SourceError(f"{folder} is not a complete diffusers model: {rel(stem)}.safetensors is missing")


def folder_files(folder: Path, family: Family | None, allow_pickle: bool = False) -> tuple[list[str], str | None]:
    """Every file of `folder` that the export reads, relative to it, and the weights' variant.

    `family` None: a lone tiny VAE, config.json and weights at the top level."""
    if family is None:
        weights, variant = _weights(folder, TINY_VAE, allow_pickle)
        if not (folder / "config.json").is_file():
            raise SourceError(f"{folder} is not a complete diffusers model: config.json is missing")
        return ["config.json", *weights], variant
    files = ["model_index.json", "scheduler/scheduler_config.json"]
    variants = set()
    for component in family.components:
        sub = _WEIGHT_DIRS[component][0]
        weights, variant = _weights(folder, component, allow_pickle)
        variants.add(variant)
        files += [f"{sub}/config.json", *weights]
    for tok in family.tokenizers:
        tok_dir = folder / tok
        if not tok_dir.is_dir():
            raise SourceError(f"{folder} is not a complete diffusers model: {tok}/ is missing")
        files += [f"{tok}/{p.name}" for p in sorted(tok_dir.iterdir()) if p.is_file()]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise SourceError(f"{folder} is not a complete diffusers model: {missing[0]} is missing")
    if len(variants) > 1:
        raise SourceError(f"{folder} mixes fp32 and fp16 weight files; keep one variant per component")
    return sorted(dict.fromkeys(files)), variants.pop()


def _family_of_folder(folder: Path) -> Family:
    """From the pipeline class in model_index.json; a turbo and a guided family share their pipeline class, and
    tell apart by the scheduler: the turbo checkpoints sample from the last timestep ("trailing" spacing)."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise SourceError(f"{folder} is not a diffusers model folder: model_index.json is missing")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except ValueError:
        raise SourceError(f"{index} is not valid JSON") from None
    candidates = [f for f in FAMILIES.values() if f.pipeline_class == cls]
    if not candidates:
        supported = ", ".join(sorted({f.pipeline_class for f in FAMILIES.values()}))
        raise SourceError(f"{folder} holds a {cls}; supported pipelines: {supported}")
    if len(candidates) > 1:
        try:
            scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError):
            scheduler = {}
        turbo = scheduler.get("timestep_spacing") == "trailing"
        candidates = [f for f in candidates if f.guided != turbo]
    return candidates[0]


def _hash_folder(folder: Path, files: list[str]) -> dict[str, str]:
    return dict(zip(files, sha256_files([folder / f for f in files])))


def _check_lock(model_id: str, entry: dict, actual: dict[str, str]) -> None:
    pinned = entry["files"]
    for name, expected in pinned.items():
        got = actual.get(name)
        if got is None:
            raise SourceError(f"{model_id}: {name} is pinned in models.lock but was not downloaded")
        if got != expected:
            raise SourceError(f"{model_id}: sha256 mismatch for {name}: expected {expected}, got {got}")
    unpinned = sorted(set(actual) - set(pinned))
    if unpinned:
        raise SourceError(
            f"{model_id}: models.lock pins only part of the files the export reads ({unpinned[0]} is not pinned); "
            f"run: turbo-export --update-lock {model_id}"
        )


def _reachable(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _download(
    repo: str, revision: str | None, family: Family | None, files: list[str] | None, allow_pickle: bool = False
) -> tuple[Path, str]:
    """Snapshot of `files` (or, unpinned, of the fp32 files a family needs); honours HF_HUB_OFFLINE and the cache."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        raise SourceError('huggingface_hub is not installed: pip install "turbo-runtime[export]"') from None
    hub_logging.set_verbosity_error()
    # Without a route to the hub, go straight to the local cache instead of retrying for half a minute.
    offline = constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT)
    if files:
        patterns = list(files)
    elif family is None:  # a lone tiny VAE
        patterns = ["config.json", "*.safetensors"] + ["*.bin"] * allow_pickle
    else:
        dirs = sorted({_WEIGHT_DIRS[c][0] for c in family.components} | set(family.tokenizers) | {"scheduler"})
        patterns = ["model_index.json", *(f"{d}/*.json" for d in dirs), *(f"{d}/*.txt" for d in dirs)]
        patterns += [f"{d}/*.safetensors" for d in dirs] + [f"{d}/*.bin" for d in dirs if allow_pickle]
    try:
        path = snapshot_download(
            repo,
            revision=revision,
            allow_patterns=patterns,
            ignore_patterns=None if files else ["*.fp16.*"],
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        raise SourceError(
            f"cannot download {repo}@{revision or 'main'}: "
            f"{'offline (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else 'the hub is unreachable'} "
            "and the Hugging Face cache has no copy; download the model elsewhere and pass its folder: "
            "turbo-export /path/to/folder"
        ) from None
    except Exception as e:  # connection errors come in many types across huggingface_hub versions
        raise SourceError(
            f"cannot download {repo}@{revision}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            "without network, pass a local diffusers folder instead: turbo-export /path/to/folder"
        ) from None
    resolved = Path(path).name  # snapshot folders are named by commit hash
    return Path(path), resolved


def _entry_family(model: str, name: str, vae: bool, wanted: str | None = None) -> Family | None:
    """The family a replica or lock entry names (None for a tiny VAE), checked against what the caller wants."""
    if name == TINY_VAE:
        if not vae:
            raise SourceError(f"{model} is a tiny VAE, not a pipeline: pass it with --vae")
        return None
    if vae:
        raise SourceError(f"{model} is a {name} model, not a tiny VAE (AutoencoderTiny)")
    if wanted is not None and wanted != name:
        raise SourceError(f"{model} is a {name} model; --family {wanted} applies to folders only")
    return get_family(name)


def _tiny_vae_folder(folder: Path) -> None:
    try:
        cls = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        cls = None
    if cls != "AutoencoderTiny":
        raise SourceError(f"{folder} is not a tiny VAE folder: its config.json must name AutoencoderTiny")


def default_tiny_vae(model: Source) -> str:
    """What --vae tiny means for `model`: TAESD for SD models, TAESDXL for SDXL; a replica for a replica."""
    if model.kind == "replica":
        return "tiny-taesd" if model.model_id.startswith("tiny-") else "taesd-arch"
    return "madebyollin/taesdxl" if model.family.watermarked else "madebyollin/taesd"


def resolve_vae(vae: str, model: Source, allow_pickle: bool = False) -> Source:
    """The tiny VAE that replaces `model`'s VAE: "tiny" (the default for the model), or a replica, hub id or folder."""
    return resolve(default_tiny_vae(model) if vae == "tiny" else vae, allow_pickle, vae=True)


def resolve(model: str, allow_pickle: bool = False, family: str | None = None, vae: bool = False) -> Source:
    """Turn MODEL (replica name, hub id in models.lock, or folder) into a verified Source.

    `family` names the family of a folder whose files do not tell it; for replicas and hub ids it must agree.
    `vae`: MODEL is a tiny VAE (the Source's family is then None).
    """
    wanted = family
    if model in REPLICAS:
        family = _entry_family(model, REPLICAS[model][0], vae, wanted)
        path = replica_path(model)
        files, variant = folder_files(path, family)
        return Source(model, "replica", path, family, variant, _hash_folder(path, files))
    lock = read_lock()
    if model in lock:
        entry = lock[model]
        family = _entry_family(model, entry["family"], vae, wanted)
        if not entry.get("files") or not entry.get("revision"):
            raise SourceError(
                f"models.lock pins no revision or file hashes for {model}; run: turbo-export --update-lock {model}"
            )
        path, revision = _download(entry.get("repo", model), entry["revision"], family, list(entry["files"]))
        try:  # pickled weights are acceptable here: every file is checked against its pinned sha256 below
            files, variant = folder_files(path, family, allow_pickle=True)
        except SourceError as e:
            raise SourceError(
                f"{model}: models.lock pins only part of the files the export reads ({e}); "
                f"run: turbo-export --update-lock {model}"
            ) from None
        hashes = _hash_folder(path, files)
        _check_lock(model, entry, hashes)
        return Source(model, "hub", path, family, variant, hashes, revision)
    path = Path(model).expanduser()
    if path.is_dir():
        if vae:
            _tiny_vae_folder(path)
            family = None
        else:
            family = get_family(wanted) if wanted else _family_of_folder(path)
        files, variant = folder_files(path, family, allow_pickle)
        return Source(str(path.resolve()), "folder", path.resolve(), family, variant, _hash_folder(path, files))
    if path.exists():
        raise SourceError(f"{model} is a file; MODEL must be a diffusers folder, a hub id or a replica name")
    raise SourceError(f"unknown model {model!r}; known: {', '.join(known_models())}; a diffusers folder path works too")


def update_lock(model: str, repo: str | None = None, family: str | None = None, allow_pickle: bool = False) -> dict:
    """Resolve `model` on the hub at its newest revision and write its entry (revision + file hashes)."""
    path = lock_path()
    lock = read_lock(path)
    entry = dict(lock.get(model, {}))
    entry["repo"] = repo or entry.get("repo", model)
    if family:
        entry["family"] = family
    if "family" not in entry:
        raise SourceError(f"{model} is not in models.lock yet: pass --family ({', '.join([*FAMILIES, TINY_VAE])})")
    fam = None if entry["family"] == TINY_VAE else get_family(entry["family"])
    folder, revision = _download(entry["repo"], None, fam, None, allow_pickle)
    files, _ = folder_files(folder, fam, allow_pickle)
    entry["revision"] = revision
    if fam is not None:
        entry.setdefault("steps", fam.default_steps)
        entry.setdefault("size", fam.default_size)
    entry["files"] = _hash_folder(folder, files)
    lock[model] = entry
    write_text_atomic(path, dump_lock(lock))
    return entry


def dump_lock(lock: dict[str, dict]) -> str:
    lines = [
        "# Hub models turbo-export accepts by id: pinned revision and sha256 of every file used.",
        "# Weights are the fp16 variant files where the repo has them (half the download); the export loads float32.",
        "# An entry that pins only some of its files is refused until completed with: turbo-export --update-lock MODEL",
        "# Regenerate an entry with: turbo-export --update-lock MODEL",
        "",
    ]
    for model in sorted(lock):
        entry = lock[model]
        lines.append(f'[models."{model}"]')
        for key in ("repo", "revision", "family", "steps", "size"):
            if entry.get(key) is not None:
                lines.append(f"{key} = {json.dumps(entry[key])}")
        lines.append(f'[models."{model}".files]')
        for name, digest in sorted(entry.get("files", {}).items()):
            lines.append(f'"{name}" = "{digest}"')
        lines.append("")
    return "\n".join(lines)
