"""The paper's image datasets, through torchvision, as normalised tensors.

``mnist`` and ``fashion-mnist`` (LeNet5, paper Table 3), ``cifar10`` and
``cifar100`` (ResNet18, CCT7) are small enough to hold whole on the device.
Each split's pixels are scaled to [0, 1] and normalised per channel with the
dataset's usual training-set mean and standard deviation, which is exactly
torchvision's ``ToTensor()`` + ``Normalize(mean, std)``. ``imagenet`` is not:
see ``llpf.data.imagenet``.

``data.root`` names the folder. Nothing is downloaded unless a loader is
called with ``download=True`` (torchvision's own download, into ``root``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig
from ..errors import DataError
from . import Bundle, Split, register
from .idx import IDX_FILES, find_idx_files, read_idx
from .image_folder import is_archive, load_image_folder
from .imagenet import imagenet_root

MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = (("train", True), ("test", False))


def normalise(images: np.ndarray | torch.Tensor, dataset: str) -> torch.Tensor:
    """uint8 images [N, C, H, W] as float32, scaled to [0, 1] and normalised with ``MEAN_STD[dataset]``."""
    mean, std = MEAN_STD[dataset]
    x = TF.to_dtype(torch.as_tensor(images).contiguous(), torch.float32, scale=True)
    return TF.normalize(x, list(mean), list(std), inplace=True)


def _root(cfg: DataConfig, label: str, hint: str, default: Path | None = None, create: bool = False) -> Path:
    if cfg.root:
        root = Path(cfg.root).expanduser()
    elif default is not None and default.exists():
        root = default
    else:
        raise DataError(f"no folder given for {label}: set data.root (--data-dir); {hint}")
    if create:
        root.mkdir(parents=True, exist_ok=True)
    elif not root.exists():
        raise DataError(f"{label} not found: {root} does not exist; {hint}")
    return root


def _bundle(dataset: str, arrays: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, where: Path) -> Bundle:
    splits = {}
    for name, (images, labels) in arrays.items():
        labels = np.asarray(labels, np.int64)
        if images.ndim != 4 or len(images) != len(labels):
            raise DataError(f"{where}: {name} split has images of shape {list(images.shape)} "
                            f"and {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{where}: {name} labels outside 0..{num_classes - 1}")
        splits[name] = Split(normalise(images, dataset), torch.from_numpy(labels))
    return Bundle(splits["train"], splits["test"], num_classes)


# ---------------------------------------------------------------- MNIST and Fashion-MNIST


def _torchvision_splits(tv_class, root: Path, download: bool, where: str, arrays_of) -> dict:
    """Both splits through torchvision's own dataset class; its errors become one-line DataErrors."""
    arrays = {}
    for name, train in SPLITS:
        try:
            ds = tv_class(str(root), train=train, download=download)
        except RuntimeError as e:
            raise DataError(f"{where}: {' '.join(str(e).split())}") from None
        arrays[name] = arrays_of(ds)
    return arrays


def _mnist_like(cfg: DataConfig, dataset: str, tv_class, hint: str, default: Path | None, download: bool) -> Bundle:
    label = tv_class.__name__
    root = _root(cfg, label, hint, default, create=download)
    raw = root / tv_class.__name__ / "raw"
    if download or all((raw / stem).is_file() for stem in IDX_FILES.values()):
        arrays = _torchvision_splits(tv_class, root, download, f"{label} at {root}",
                                     lambda ds: (ds.data.numpy()[:, None], ds.targets.numpy()))
        return _bundle(dataset, arrays, 10, root)
    files = find_idx_files(raw) or find_idx_files(root)
    if files is None:
        raise DataError(f"{label} not found in {root} (looked for {tv_class.__name__}/raw/ and for "
                        f"{', '.join(IDX_FILES.values())}, plain or .gz); {hint}")
    arrays = {name: (read_idx(files[name, "images"])[:, None], read_idx(files[name, "labels"])) for name, _ in SPLITS}
    return _bundle(dataset, arrays, 10, files["train", "images"].parent)


@register("mnist")
def load_mnist(cfg: DataConfig, download: bool = False) -> Bundle:
    """MNIST, 60,000 + 10,000 images [N, 1, 28, 28], from torchvision's layout or a flat folder of IDX files."""
    hint = "point it at a folder holding MNIST/raw/ (torchvision's layout) or the four IDX files"
    return _mnist_like(cfg, "mnist", torchvision.datasets.MNIST, hint, None, download)


@register("fashion-mnist")
def load_fashion_mnist(cfg: DataConfig, download: bool = False) -> Bundle:
    """Fashion-MNIST, 60,000 + 10,000 images [N, 1, 28, 28]; by default from Debian's package."""
    hint = (f"install it with `apt-get install dataset-fashion-mnist` (files in {DEBIAN_FASHION_MNIST}) "
            f"or point data.root at a folder holding FashionMNIST/raw/ or the four IDX files")
    return _mnist_like(cfg, "fashion-mnist", torchvision.datasets.FashionMNIST, hint, DEBIAN_FASHION_MNIST, download)


# ---------------------------------------------------------------- CIFAR-10 and CIFAR-100


def _cifar(cfg: DataConfig, dataset: str, tv_class, num_classes: int, download: bool,
           image_folders: bool) -> Bundle:
    """torchvision's pickled batches; for CIFAR-10 also an image folder or archive of one."""
    label = tv_class.__name__
    hint = f"point it at the folder holding {tv_class.base_folder}/"
    if image_folders:
        hint += " or train/<class>/ and test/<class>/ image folders (or a .tar.xz of them)"
    root = _root(cfg, label, hint, create=download)
    if root.name == tv_class.base_folder:
        root = root.parent
    if download or (root / tv_class.base_folder).is_dir():
        # torchvision checks each file's MD5 before unpickling it, so only the genuine batches are unpickled
        arrays = _torchvision_splits(tv_class, root, download, str(root / tv_class.base_folder),
                                     lambda ds: (ds.data.transpose(0, 3, 1, 2), ds.targets))
        return _bundle(dataset, arrays, num_classes, root)
    if image_folders and (is_archive(root) or (root / "train").is_dir()):
        classes, arrays = load_image_folder(root, ("train", "test"))
        if len(classes) != num_classes:
            raise DataError(f"{root}: {len(classes)} class folders, {label} has {num_classes}")
        return _bundle(dataset, _mixed(arrays), num_classes, root)
    raise DataError(f"{label} not found in {root}; {hint}")


def _mixed(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split in one fixed random order (seed 0). Image folders list their images class by class, where
    torchvision's CIFAR batches mix them; mixed, a ``limit_train`` prefix is a sample of every class."""
    rng = np.random.default_rng(0)
    out = {}
    for name, (images, labels) in arrays.items():
        order = rng.permutation(len(labels))
        out[name] = (images[order], np.asarray(labels)[order])
    return out


@register("cifar10")
def load_cifar10(cfg: DataConfig, download: bool = False) -> Bundle:
    """CIFAR-10, 50,000 + 10,000 images [N, 3, 32, 32].

    From torchvision's ``cifar-10-batches-py`` or from ``train/<class>/``,
    ``test/<class>/`` image folders (a folder or a tar archive of one, such as
    a JPEG re-encoding of CIFAR-10: accuracies on it are close to, not equal
    to, those on the original images), each split then put in one fixed random
    order, as torchvision's batches are.
    """
    return _cifar(cfg, "cifar10", torchvision.datasets.CIFAR10, 10, download, image_folders=True)


@register("cifar100")
def load_cifar100(cfg: DataConfig, download: bool = False) -> Bundle:
    """CIFAR-100 (fine labels), 50,000 + 10,000 images [N, 3, 32, 32], from ``cifar-100-python``."""
    return _cifar(cfg, "cifar100", torchvision.datasets.CIFAR100, 100, download, image_folders=False)


# ---------------------------------------------------------------- ImageNet


@register("imagenet")
def load_imagenet(cfg: DataConfig) -> Bundle:
    """ImageNet is too large to hold as tensors: this entry checks the folder and says what to use instead."""
    root = imagenet_root(cfg.root)
    raise DataError(f"ImageNet ({root}) is read in batches, not held as tensors: build its loaders with "
                    f"llpf.data.imagenet.imagenet_loaders({str(root)!r}) and pass them to the path engine")
