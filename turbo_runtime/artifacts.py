"""Read and verify an artifacts folder: manifest.json, tokenizers, and the files of each format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from turbo_runtime.errors import ArtifactError
from turbo_runtime.files import sha256_files
from turbo_runtime.spec import ComponentIO, Family, ModelDims, TensorSpec, get_family

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
        root = Path(root).expanduser()
        path = root / MANIFEST
        if not path.is_file():
            hint = "export first: turbo-export MODEL --out " + str(root)
            what = "does not exist" if not root.exists() else f"has no {MANIFEST}"
            raise ArtifactError(f"artifacts folder {root} {what}; {hint}")
        try:
            manifest = json.loads(path.read_text())
        except ValueError as e:
            raise ArtifactError(f"{path} is not valid JSON ({e}); export again with turbo-export") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format version {manifest.get('format_version')}, this runtime reads "
                f"{FORMAT_VERSION}; export again with this version of turbo-export"
            )
        return cls(root, manifest)

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
        return self.manifest.get("pipeline", {})

    def io(self, component: str) -> ComponentIO:
        return component_io_from_manifest(self.manifest["components"][component])

    def export_command(self, fmt: str) -> str:
        return (
            f"turbo-export {self.model_id} --format {fmt} --height {self.height} --width {self.width} "
            f"--precision {self.precision} --out {self.root} --force"
        )

    def component_path(self, component: str, fmt: str) -> Path:
        """Path of a component's model file in `fmt` (model.onnx or .xml)."""
        if fmt not in self.manifest["formats"]:
            raise ArtifactError(
                f"{self.root} holds no {fmt} artifacts (it has: {', '.join(self.manifest['formats']) or 'none'}); "
                f"export them: {self.export_command(fmt)}"
            )
        return self.root / self.manifest["components"][component]["files"][fmt][0]

    def tokenizer_path(self, name: str) -> Path:
        return self.root / name / "tokenizer.json"

    def verify(self, fmt: str | None) -> None:
        """Check that the tokenizers and the files of `fmt` exist and match the manifest's sha256."""
        listed = self.manifest["files"]
        wanted = [f"{tok}/tokenizer.json" for tok in self.family.tokenizers]
        if fmt is not None:
            for component in self.family.components:
                self.component_path(component, fmt)  # raises if the format was not exported
                wanted += self.manifest["components"][component]["files"][fmt]
        for rel in wanted:
            if rel not in listed:
                raise ArtifactError(f"{self.root / MANIFEST} does not list {rel}; export again")
            if not (self.root / rel).is_file():
                raise ArtifactError(f"artifact file {self.root / rel} is missing; export again")
        for rel, digest in zip(wanted, sha256_files([self.root / rel for rel in wanted])):
            if digest != listed[rel]:
                raise ArtifactError(
                    f"artifact file {self.root / rel} was modified: sha256 {digest}, manifest says {listed[rel]}; "
                    "export again"
                )
