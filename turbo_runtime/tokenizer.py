"""CLIP tokenization to fixed-length ids, with `tokenizers` only (no transformers at run time)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from turbo_runtime.errors import ArtifactError

log = logging.getLogger(__name__)


class Tokenizer:
    """Loads the tokenizer.json the export wrote (truncation and padding to the model length are set in it)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as _Tokenizer

        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as e:
            raise ArtifactError(f"cannot read tokenizer {path}: {e}") from None
        if not self._tok.truncation or not self._tok.padding:
            raise ArtifactError(f"{path} sets no fixed length; export again with turbo-export")
        self.length = self._tok.truncation["max_length"]

    def __call__(self, prompt: str) -> np.ndarray:
        """Token ids of shape (1, length), int64; a longer prompt is truncated with a warning, as diffusers does."""
        enc = self._tok.encode(prompt)
        if enc.overflowing:
            dropped = self._tok.decode([i for o in enc.overflowing for i in o.ids])
            log.warning("the prompt is longer than %d tokens; this part was dropped: %r", self.length, dropped)
        return np.asarray([enc.ids], dtype=np.int64)
