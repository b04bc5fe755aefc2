"""MNIST's IDX files, plain or gzipped, wherever they lie.

torchvision's ``MNIST`` reads only unpacked files under ``root/<Class>/raw``;
the Debian package ``dataset-fashion-mnist`` ships the four gzipped files in
one flat folder. This reader takes either, so both layouts load the same way.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DataError

# IDX type codes (http://yann.lecun.com/exdb/mnist/), big-endian on disk.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in one IDX file (gzip is recognised by its magic bytes, not the name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path}: truncated IDX file (header says {shape}, data holds {len(raw) - offset} bytes)")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path] | None:
    """The four MNIST-format files in ``folder`` (each plain or ``.gz``), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found
