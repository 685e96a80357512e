"""Read and verify an artifacts folder: manifest.json, tokenizers, and the files of each format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from turbo_runtime.errors import ArtifactError
from turbo_runtime.files import sha256_files
from turbo_runtime.spec import FAMILIES, ComponentIO, Family, ModelDims, TensorSpec, get_family

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class _Optional(NamedTuple):
    """A manifest key that may be missing or null."""

    schema: Any


# What the runtime reads from a manifest. A type, [items], {str: values} (any keys) or {key: schema}.
_TENSORS = [{"name": str, "shape": [int], "dtype": str}]
_SOURCE = {"id": str, "source_hash": str}
_SCHEMA = {
    "model": _SOURCE,
    "vae": _Optional(_SOURCE),
    "family": str,
    "height": int,
    "width": int,
    "precision": str,
    "formats": [str],
    "dims": dict,
    "scheduler": dict,
    "pipeline": _Optional(dict),
    "components": {str: {"inputs": _TENSORS, "outputs": _TENSORS, "files": {str: [str]}}},
    "files": {str: str},
}
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object"}


def _schema_problem(value: Any, schema: Any, where: str = "") -> str | None:
    """What is wrong with `value` (found at the dotted key path `where`) against `schema`, or None."""
    if isinstance(schema, _Optional):
        return None if value is None else _schema_problem(value, schema.schema, where)

    def wrong(kind: str) -> str:
        return f"{where or 'the manifest'} must be {kind}, got {_shown(value)}"

    if isinstance(schema, list):
        if not isinstance(value, list):
            return wrong("a list")
        return next((p for i, v in enumerate(value) if (p := _schema_problem(v, schema[0], f"{where}[{i}]"))), None)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return wrong("an object")
        at = f"{where}." if where else ""
        if str in schema:  # a map: any key, one schema for every value
            return next((p for k, v in value.items() if (p := _schema_problem(v, schema[str], at + k))), None)
        for key, sub in schema.items():
            if key not in value and not isinstance(sub, _Optional):
                return f"{at}{key} is missing"
            if problem := _schema_problem(value.get(key), sub, at + key):
                return problem
        return None
    if isinstance(value, schema) and not (isinstance(value, bool) and schema is int):
        return None
    return wrong(_TYPE_NAMES[schema])


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def component_io_from_manifest(entry: dict) -> ComponentIO:
    return ComponentIO(
        tuple(TensorSpec.from_dict(t) for t in entry["inputs"]),
        tuple(TensorSpec.from_dict(t) for t in entry["outputs"]),
    )


@dataclass(frozen=True)
class Artifacts:
    root: Path
    manifest: dict

    @classmethod
    def load(cls, root: Path | str) -> Artifacts:
        """Read the manifest, refusing one whose structure or paths the runtime cannot trust."""
        root = Path(root).expanduser()
        path = root / MANIFEST
        if not path.is_file():
            hint = "export first: turbo-export MODEL --out " + str(root)
            what = "does not exist" if not root.exists() else f"has no {MANIFEST}"
            raise ArtifactError(f"artifacts folder {root} {what}; {hint}")
        try:  # through `path` too: a manifest.json linking outside the folder is refused
            manifest = json.loads(cls(root, {}).path(MANIFEST).read_text())
        except ValueError as e:
            raise ArtifactError(f"{path} is not valid JSON ({e}); export again with turbo-export") from None
        if isinstance(manifest, dict) and manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format version {manifest.get('format_version')}, this runtime reads "
                f"{FORMAT_VERSION}; export again with this version of turbo-export"
            )
        art = cls(root, manifest)
        if problem := art._structure_problem():
            raise ArtifactError(f"{path}: {problem}; export again with turbo-export")
        for entry in manifest["components"].values():  # every path it names, before any is opened
            for files in entry["files"].values():
                for rel in files:
                    art.path(rel)
        for rel in manifest["files"]:
            art.path(rel)
        return art

    def _structure_problem(self) -> str | None:
        """What keeps the runtime from reading this manifest (a missing key, a wrong type), or None."""
        m = self.manifest
        if problem := _schema_problem(m, _SCHEMA):
            return problem
        if m["family"] not in FAMILIES:
            return f"family {m['family']!r} is not a model family of this runtime"
        try:
            ModelDims.from_dict(m["dims"])
        except (TypeError, KeyError) as e:
            return f"dims does not hold this runtime's model sizes ({e})"
        for component in self.family.components:
            if component not in m["components"]:
                return f"components.{component} is missing"
            for fmt in m["formats"]:
                if not m["components"][component]["files"].get(fmt):
                    return f"components.{component}.files.{fmt} is missing"
        return None

    def path(self, rel: str) -> Path:
        """The file a manifest-relative path names, refused unless it lies inside the artifacts folder.

        Every file the runtime opens is found through here: a hand-edited manifest naming an absolute path or
        climbing out with "..", or a file or folder that is a symbolic link leading outside, is an error.
        """
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
            raise ArtifactError(
                f"{self.root / MANIFEST} names {rel!r}, which is not a path inside {self.root}; export again"
            )
        path = self.root.joinpath(*parts)
        target = path.resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ArtifactError(f"{path} leads outside the artifacts folder (to {target}); export again")
        return path

    @property
    def model_id(self) -> str:
        return self.manifest["model"]["id"]

    @property
    def family(self) -> Family:
        return get_family(self.manifest["family"])

    @property
    def height(self) -> int:
        return self.manifest["height"]

    @property
    def width(self) -> int:
        return self.manifest["width"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def dims(self) -> ModelDims:
        return ModelDims.from_dict(self.manifest["dims"])

    @property
    def scheduler_config(self) -> dict:
        return self.manifest["scheduler"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One image's latents (the VAE decoder's input)."""
        return self.io("vae_decoder").inputs[0].shape

    @property
    def unet_batch(self) -> int:
        """Latents per UNet call: 1, or 2 for classifier-free guidance in one call."""
        return self.io("unet").inputs[0].shape[0]

    @property
    def pipeline_options(self) -> dict[str, bool]:
        """diffusers pipeline switches (spec.PIPELINE_OPTIONS) the model was saved with."""
        return self.manifest.get("pipeline") or {}

    def io(self, component: str) -> ComponentIO:
        return component_io_from_manifest(self.manifest["components"][component])

    def export_command(self, fmt: str) -> str:
        return (
            f"turbo-export {self.model_id} --format {fmt} --height {self.height} --width {self.width} "
            f"--precision {self.precision} --out {self.root} --force"
        )

    def component_files(self, component: str, fmt: str) -> list[Path]:
        """A component's files in `fmt`, its model file (model.onnx or .xml) first."""
        if fmt not in self.manifest["formats"]:
            raise ArtifactError(
                f"{self.root} holds no {fmt} artifacts (it has: {', '.join(self.manifest['formats']) or 'none'}); "
                f"export them: {self.export_command(fmt)}"
            )
        return [self.path(rel) for rel in self.manifest["components"][component]["files"][fmt]]

    def component_path(self, component: str, fmt: str) -> Path:
        """Path of a component's model file in `fmt` (model.onnx or .xml)."""
        return self.component_files(component, fmt)[0]

    def component_bytes(self, component: str, fmt: str) -> int:
        """Size of a component's files in `fmt` on disk."""
        return sum(p.stat().st_size for p in self.component_files(component, fmt))

    def tokenizer_path(self, name: str) -> Path:
        return self.path(f"{name}/tokenizer.json")

    def verify(self, fmt: str | None) -> None:
        """Check that the tokenizers and the files of `fmt` exist and match the manifest's sha256."""
        listed = self.manifest["files"]
        wanted = [f"{tok}/tokenizer.json" for tok in self.family.tokenizers]
        if fmt is not None:
            for component in self.family.components:
                self.component_files(component, fmt)  # raises if the format was not exported
                wanted += self.manifest["components"][component]["files"][fmt]
        paths = [self.path(rel) for rel in wanted]
        for rel, path in zip(wanted, paths):
            if rel not in listed:
                raise ArtifactError(f"{self.root / MANIFEST} does not list {rel}; export again")
            if not path.is_file():
                raise ArtifactError(f"artifact file {path} is missing; export again")
        for rel, path, digest in zip(wanted, paths, sha256_files(paths)):
            if digest != listed[rel]:
                raise ArtifactError(
                    f"artifact file {path} was modified: sha256 {digest}, manifest says {listed[rel]}; export again"
                )
