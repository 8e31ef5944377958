"""A cache of frozen SAM image embeddings, in memory and optionally on disk.

With the SAM / MedSAM encoder frozen, an image's embedding never changes, so it is computed
once and reused in every later epoch, in validation and in ``test.py``. An entry is keyed by
the exact encoder input (the SAM-preprocessed pixels, so the image content, its size and the
preprocessing all enter) and by a fingerprint of the encoder's weights and dtype: a changed
image, input size or checkpoint never meets a stale entry.

On disk an entry is one safetensors file, ``<folder>/<key[:2]>/<key>.safetensors``, written
to a temporary name and renamed into place, so a reader never sees half a file and several
ranks can share the folder. An unreadable or malformed entry is recomputed with a warning.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 1 << 30  # embeddings kept in memory beside the disk copies


def encoder_fingerprint(encoder: nn.Module) -> str:
    """A hash of every parameter and buffer of ``encoder`` (names, shapes, dtypes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in encoder.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings of a frozen encoder, looked up by input.

    Arguments:
      fingerprint: :func:`encoder_fingerprint` of the encoder whose outputs are cached.
      folder: where entries are written and read (``None``: memory only).
      max_memory_bytes: the in-memory part keeps the most recently used entries up to this.
    """

    def __init__(self, fingerprint: str, folder: str | Path | None = None,
                 max_memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.fingerprint = fingerprint
        self.folder = Path(folder) if folder is not None else None
        self.max_memory_bytes = max_memory_bytes
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.memory_bytes = 0
        self.hits = self.misses = self.recomputed = 0

    def counts(self) -> dict[str, int]:
        """Lookups served (``hits``), computed (``misses``) and damaged entries recomputed."""
        return {"hits": self.hits, "misses": self.misses, "recomputed": self.recomputed}

    def key(self, image: torch.Tensor) -> str:
        """The key of one encoder input (3,S,S)."""
        digest = hashlib.blake2b(self.fingerprint.encode(), digest_size=20)
        digest.update(f"{tuple(image.shape)}:{image.dtype};".encode())
        digest.update(image.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def _remember(self, key: str, embedding: torch.Tensor) -> None:
        size = embedding.numel() * embedding.element_size()
        if size > self.max_memory_bytes:
            return
        self.memory[key] = embedding
        self.memory_bytes += size
        while self.memory_bytes > self.max_memory_bytes:
            _, dropped = self.memory.popitem(last=False)
            self.memory_bytes -= dropped.numel() * dropped.element_size()

    def get(self, key: str) -> torch.Tensor | None:
        """The cached embedding (C,h,w) on the CPU, or ``None``."""
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        if self.folder is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            embedding = load_file(path)["embedding"]
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            logger.warning("embedding cache entry %s is unreadable (%s); recomputing it", path,
                           error)
            self.recomputed += 1
            return None
        self._remember(key, embedding)
        return embedding

    def put(self, key: str, embedding: torch.Tensor) -> None:
        """Store one embedding (C,h,w)."""
        embedding = embedding.detach().cpu().contiguous()
        self._remember(key, embedding)
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"embedding": embedding}, tmp)
        os.replace(tmp, path)

    def encode(self, images: torch.Tensor,
               encoder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Embeddings (B,C,h,w) of encoder inputs (B,3,S,S): cached ones are read, the rest
        computed in one ``encoder`` call and stored. Returned on the inputs' device, in the
        dtype the encoder gives."""
        keys = [self.key(image) for image in images]
        found = [self.get(key) for key in keys]
        missing = [i for i, embedding in enumerate(found) if embedding is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = encoder(images[missing])
            for i, embedding in zip(missing, computed):
                self.put(keys[i], embedding)
                found[i] = embedding
        return torch.stack([embedding.to(images.device) for embedding in found])
