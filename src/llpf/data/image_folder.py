"""Small image-folder datasets decoded once into uint8 arrays, and cached.

The layout is torchvision's ``ImageFolder`` one level down: ``root/<split>/<class>/<image>``
(for example ``train/cat/0001.jpg``, ``test/cat/0001.jpg``), either as a
folder or inside a tar archive (``.tar``, ``.tar.gz``, ``.tar.xz``), read
in place. Class indices follow the sorted class names of the first split, as
``ImageFolder`` assigns them. Decoding tens of thousands of small files takes
a while, so the arrays are saved as an ``.npz`` file and read from there the
next time: in ``root/.llpf-cache/`` when ``root`` is a writable folder,
otherwise in ``$XDG_CACHE_HOME/llpf`` (``~/.cache/llpf``). A folder's cache is
not checked against the images again: delete it after changing the images.
An archive's cache is keyed by the archive's size and modification time.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images uint8 [N, C, H, W], labels int64 [N])


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llpf"


def cache_path(source: Path, splits: tuple[str, ...]) -> Path:
    """Where the decoded arrays of ``source`` are cached (see the module docstring)."""
    source = source.resolve()
    name = f"image-folder-{'-'.join(splits)}.npz"
    if source.is_dir() and os.access(source, os.W_OK):
        return source / ".llpf-cache" / name
    key = f"{source}|{splits}"
    if source.is_file():
        st = source.stat()
        key += f"|{st.st_size}|{st.st_mtime_ns}"
    return user_cache_dir() / f"{source.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}-{name}"


def _decode(data: bytes, where: str) -> np.ndarray:
    """One image as uint8 [3, H, W], decoded by PIL as torchvision's ImageFolder does."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports bad files as any of these
        raise DataError(f"{where}: cannot decode image ({' '.join(str(e).split())})") from None


def _stack(images: list[np.ndarray], names: list[str], split: str) -> np.ndarray:
    shape = images[0].shape
    for img, name in zip(images, names):
        if img.shape != shape:
            raise DataError(f"{name}: image of shape {list(img.shape)} among {split} images of shape {list(shape)}")
    return np.stack(images)


def _class_folders(folder: Path, splits: tuple[str, ...]) -> list[str]:
    try:
        return find_classes(str(folder))[0]
    except FileNotFoundError:
        raise DataError(f"{folder} not found or holds no class folders: an image folder needs "
                        f"{', '.join(s + '/' for s in splits)} with one sub-folder per class") from None


def _from_folder(root: Path, splits: tuple[str, ...]) -> tuple[list[str], Arrays]:
    classes = _class_folders(root / splits[0], splits)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for split in splits:
        unknown = sorted(set(_class_folders(root / split, splits)) - set(classes))
        if unknown:
            raise DataError(f"{root / split}: classes {unknown} are not in {splits[0]}/")
        samples = make_dataset(str(root / split), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DataError(f"{root / split} holds no images")
        images = [_decode(Path(p).read_bytes(), p) for p, _ in samples]
        arrays[split] = (_stack(images, [p for p, _ in samples], split), np.array([t for _, t in samples], np.int64))
    return classes, arrays


def _from_archive(path: Path, splits: tuple[str, ...]) -> tuple[list[str], Arrays]:
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in splits}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # one pass: compressed archives stream, they do not seek
                parts = PurePosixPath(member.name).parts
                if (not member.isfile() or len(parts) < 3 or parts[-3] not in found
                        or not parts[-1].lower().endswith(IMG_EXTENSIONS)):
                    continue
                data = tar.extractfile(member).read()
                found[parts[-3]].append((parts[-2], member.name, _decode(data, f"{path}:{member.name}")))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: unreadable archive ({' '.join(str(e).split())})") from None
    for split, items in found.items():
        if not items:
            raise DataError(f"{path} holds no images under {split}/<class>/")
    classes = sorted({c for c, _, _ in found[splits[0]]})
    class_to_idx = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for split, items in found.items():
        items.sort(key=lambda item: (item[0], item[1]))
        unknown = sorted({c for c, _, _ in items} - set(classes))
        if unknown:
            raise DataError(f"{path}: classes {unknown} in {split}/ are not in {splits[0]}/")
        arrays[split] = (_stack([img for _, _, img in items], [n for _, n, _ in items], split),
                         np.array([class_to_idx[c] for c, _, _ in items], np.int64))
    return classes, arrays


def _save(path: Path, classes: list[str], arrays: Arrays) -> None:
    """Write the cache atomically: a killed run leaves either no cache or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fields = {f"{s}_{k}": a for s, (x, y) in arrays.items() for k, a in (("x", x), ("y", y))}
            np.savez(f, classes=np.array(classes), **fields)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, splits: tuple[str, ...]) -> tuple[list[str], Arrays] | None:
    try:
        with np.load(path) as z:
            return [str(c) for c in z["classes"]], {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in splits}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a missing or damaged cache is rebuilt


def load_image_folder(source: Path, splits: tuple[str, ...] = ("train", "test")) -> tuple[list[str], Arrays]:
    """Class names and, per split, uint8 images [N, 3, H, W] and int64 labels, from the cache when it exists."""
    source = Path(source)
    cache = cache_path(source, splits)
    if cache.is_file():
        cached = _load(cache, splits)
        if cached is not None:
            return cached
    decoded = _from_archive(source, splits) if is_archive(source) else _from_folder(source, splits)
    _save(cache, *decoded)
    return decoded
