"""Dataset loaders on small files written in the real on-disk formats (no network), and augmentation."""
from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from llpf import config as C
from llpf.config import DataConfig, PathConfig
from llpf.data import BatchStream, Split, load_data, vision
from llpf.data import image_folder
from llpf.data.augment import augment, augmented, crop_flip, default_augmentation, random_crop, random_flip
from llpf.data.idx import IDX_FILES, read_idx
from llpf.data.imagenet import imagenet_loaders
from llpf.errors import ConfigError, DataError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_jpeg(chw: torch.Tensor, path: str) -> None:
    Image.fromarray(chw.permute(1, 2, 0).numpy()).save(path, quality=95)


def expected(images_u8: np.ndarray, dataset: str) -> torch.Tensor:
    """What torchvision's ToTensor() + Normalize(mean, std) make of uint8 [N, C, H, W] images."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in vision.MEAN_STD[dataset])
    return (torch.from_numpy(images_u8).float() / 255 - mean) / std


# ---------------------------------------------------------------- MNIST format


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def mnist_arrays(n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    arrays = {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8))
              for split, n in (("train", n_train), ("test", n_test))}
    arrays["train"][0][0, 0, :2] = (255, 0)  # a known white and black pixel
    return arrays


def write_mnist(folder: Path, arrays, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for (split, kind), stem in IDX_FILES.items():
        write_idx(folder / stem, arrays[split][0 if kind == "images" else 1], gz)


def check_mnist_bundle(bundle, arrays, dataset):
    for split, (images, labels) in zip((bundle.train, bundle.test), (arrays["train"], arrays["test"])):
        assert split.x.dtype == torch.float32 and split.x.shape == (len(images), 1, 28, 28)
        assert split.y.dtype == torch.long and torch.equal(split.y, torch.from_numpy(labels).long())
        torch.testing.assert_close(split.x, expected(images[:, None], dataset))
    mean, std = vision.MEAN_STD[dataset][0][0], vision.MEAN_STD[dataset][1][0]
    assert bundle.train.x[0, 0, 0, 0].item() == pytest.approx((1 - mean) / std)
    assert bundle.train.x[0, 0, 0, 1].item() == pytest.approx(-mean / std)
    assert bundle.num_classes == 10


def test_mnist_in_torchvisions_layout_loads_through_torchvision(tmp_path, monkeypatch):
    arrays = mnist_arrays()
    write_mnist(tmp_path / "MNIST" / "raw", arrays, gz=False)
    write_mnist(tmp_path / "MNIST" / "raw", arrays, gz=True)  # torchvision's download keeps both
    monkeypatch.setattr(vision, "read_idx", lambda path: pytest.fail("torchvision should read this layout"))
    check_mnist_bundle(load_data(DataConfig("mnist", root=str(tmp_path))), arrays, "mnist")


def test_mnist_raw_folder_with_only_gz_files(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path / "MNIST" / "raw", arrays, gz=True)
    check_mnist_bundle(load_data(DataConfig("mnist", root=str(tmp_path))), arrays, "mnist")


def test_fashion_mnist_in_debians_flat_layout(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays, gz=True)
    check_mnist_bundle(load_data(DataConfig("fashion-mnist", root=str(tmp_path))), arrays, "fashion-mnist")


def test_fashion_mnist_defaults_to_debians_folder(tmp_path, monkeypatch):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays, gz=True)
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", tmp_path)
    check_mnist_bundle(load_data(DataConfig("fashion-mnist")), arrays, "fashion-mnist")
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig("fashion-mnist"))


def test_idx_reader_checks_what_it_reads(tmp_path):
    values = np.array([[1, -2], [70000, 3]], ">i4")
    write_idx(tmp_path / "ints", values, gz=False)
    assert np.array_equal(read_idx(tmp_path / "ints"), values)  # big-endian on disk, native in memory
    (tmp_path / "short").write_bytes((tmp_path / "ints").read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian():
    bundle = load_data(DataConfig("fashion-mnist"))
    assert bundle.train.x.shape == (60000, 1, 28, 28) and bundle.test.x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(bundle.train.y), torch.full((10,), 6000))
    # the normalisation constants are this training set's own mean and std
    assert abs(bundle.train.x.mean().item()) < 1e-3 and abs(bundle.train.x.std().item() - 1) < 1e-3


# ---------------------------------------------------------------- CIFAR pickled batches


def trust_test_files(monkeypatch, cls):
    """Our small files cannot have the real batches' MD5 sums: tell torchvision to check only that they exist."""
    monkeypatch.setattr(cls, "train_list", [[name, None] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, None] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": None})


def cifar_images(n, seed):
    images = np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[0, :, 0, 0] = (255, 0, 128)
    return images


def dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for i in range(1, 6):
        images, labels = cifar_images(per_batch, i), [(i + j) % 10 for j in range(per_batch)]
        dump(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "data": images.reshape(per_batch, -1),
                                          "labels": labels})
        train.append((images, labels))
    test_images, test_labels = cifar_images(n_test, 9), [j % 10 for j in range(n_test)]
    dump(folder / "test_batch", {"data": test_images.reshape(n_test, -1), "labels": test_labels})
    dump(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                   "frog", "horse", "ship", "truck"]})
    images = np.concatenate([t[0] for t in train])
    labels = sum((t[1] for t in train), [])
    return (images, labels), (test_images, test_labels)


def test_cifar10_batches(tmp_path, monkeypatch):
    (train_x, train_y), (test_x, test_y) = write_cifar10(tmp_path)
    with pytest.raises(DataError, match="corrupted"):  # torchvision's MD5 check is on by default
        load_data(DataConfig("cifar10", root=str(tmp_path)))
    trust_test_files(monkeypatch, torchvision.datasets.CIFAR10)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        bundle = load_data(DataConfig("cifar10", root=str(root)))
        assert bundle.train.x.shape == (20, 3, 32, 32) and bundle.train.x.dtype == torch.float32
        assert bundle.train.y.tolist() == train_y and bundle.test.y.tolist() == test_y
        torch.testing.assert_close(bundle.train.x, expected(train_x, "cifar10"))
        torch.testing.assert_close(bundle.test.x, expected(test_x, "cifar10"))
        mean, std = (torch.tensor(v) for v in vision.MEAN_STD["cifar10"])
        torch.testing.assert_close(bundle.train.x[0, :, 0, 0], (torch.tensor([1, 0, 128 / 255]) - mean) / std)


def test_cifar100_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_x, test_x = cifar_images(8, 1), cifar_images(4, 2)
    train_y, test_y = [99, 0, 5, 50, 7, 1, 2, 3], [98, 4, 0, 60]
    dump(folder / "train", {"data": train_x.reshape(8, -1), "fine_labels": train_y, "coarse_labels": [0] * 8})
    dump(folder / "test", {"data": test_x.reshape(4, -1), "fine_labels": test_y, "coarse_labels": [0] * 4})
    dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                           "coarse_label_names": [f"s{i}" for i in range(20)]})
    trust_test_files(monkeypatch, torchvision.datasets.CIFAR100)
    bundle = load_data(DataConfig("cifar100", root=str(tmp_path)))
    assert bundle.num_classes == 100
    assert bundle.train.y.tolist() == train_y and bundle.test.y.tolist() == test_y
    torch.testing.assert_close(bundle.train.x, expected(train_x, "cifar100"))


# ---------------------------------------------------------------- CIFAR-10 as JPEG image folders

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def colour(class_index: int, split: str) -> tuple[int, int, int]:
    return (20 * class_index + 10, 250 - 20 * class_index, 128 if split == "train" else 60)


def write_jpeg_folders(root: Path, per_class={"train": 2, "test": 1}) -> None:
    """Uniform-colour images, which JPEG stores without visible loss, one colour per class and split."""
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                img = torch.tensor(colour(c, split), dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32).contiguous()
                write_jpeg(img, str(root / split / name / f"{k:04d}.jpg"))


def check_jpeg_bundle(bundle):
    for split, n in (("train", 2), ("test", 1)):
        s = getattr(bundle, split)
        assert s.x.shape == (10 * n, 3, 32, 32) and sorted(s.y.tolist()) == [c for c in range(10) for _ in range(n)]
        assert s.y.tolist() != sorted(s.y.tolist())  # a fixed random order, not class by class
        want = torch.stack([expected(np.array(colour(c, split), np.uint8).reshape(1, 3, 1, 1), "cifar10")[0]
                            .expand(3, 32, 32) for c in s.y.tolist()])
        std = torch.tensor(vision.MEAN_STD["cifar10"][1]).view(1, 3, 1, 1)
        assert ((s.x - want) * std).abs().max() <= 2 / 255  # within two grey levels of the colour written


def test_cifar10_jpeg_folders_are_decoded_once_and_cached(tmp_path):
    write_jpeg_folders(tmp_path)
    first = load_data(DataConfig("cifar10", root=str(tmp_path)))
    check_jpeg_bundle(first)
    assert list((tmp_path / ".llpf-cache").glob("*.npz"))
    for jpg in tmp_path.glob("*/*/*.jpg"):
        jpg.unlink()
    again = load_data(DataConfig("cifar10", root=str(tmp_path)))  # no images left: only the cache can answer
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)


def test_cifar10_from_an_archive_caches_in_the_user_cache(tmp_path, monkeypatch):
    write_jpeg_folders(tmp_path / "images")
    archive = tmp_path / "cifar10-jpg.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for split in ("train", "test"):
            tar.add(tmp_path / "images" / split, arcname=split)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    check_jpeg_bundle(load_data(DataConfig("cifar10", root=str(archive))))
    assert len(list((tmp_path / "cache" / "llpf").glob("cifar10-jpg.tar.xz-*.npz"))) == 1
    monkeypatch.setattr(image_folder, "_from_archive", lambda *a: pytest.fail("the cache should answer"))
    check_jpeg_bundle(load_data(DataConfig("cifar10", root=str(archive))))


def test_a_damaged_cache_is_rebuilt(tmp_path):
    write_jpeg_folders(tmp_path)
    load_data(DataConfig("cifar10", root=str(tmp_path)))
    (cache,) = (tmp_path / ".llpf-cache").glob("*.npz")
    cache.write_bytes(b"PK\x03\x04 truncated")
    check_jpeg_bundle(load_data(DataConfig("cifar10", root=str(tmp_path))))


def test_image_folder_errors(tmp_path):
    write_jpeg_folders(tmp_path / "odd")
    write_jpeg(torch.zeros(3, 40, 40, dtype=torch.uint8), str(tmp_path / "odd" / "train" / "cat" / "big.jpg"))
    with pytest.raises(DataError, match="big.jpg"):
        load_data(DataConfig("cifar10", root=str(tmp_path / "odd")))
    (tmp_path / "few" / "train" / "a").mkdir(parents=True)
    (tmp_path / "few" / "test" / "a").mkdir(parents=True)
    for split in ("train", "test"):
        write_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "few" / split / "a" / "0.jpg"))
    with pytest.raises(DataError, match="1 class folders"):
        load_data(DataConfig("cifar10", root=str(tmp_path / "few")))
    (tmp_path / "few" / "test" / "b").mkdir()
    write_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "few" / "test" / "b" / "0.jpg"))
    (tmp_path / "few" / ".llpf-cache" / "image-folder-train-test.npz").unlink()
    with pytest.raises(DataError, match=r"classes \['b'\] are not in train/"):
        load_data(DataConfig("cifar10", root=str(tmp_path / "few")))
    (tmp_path / "nosplit" / "train" / "a").mkdir(parents=True)
    write_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "nosplit" / "train" / "a" / "0.jpg"))
    with pytest.raises(DataError, match="test not found or holds no class folders"):
        load_data(DataConfig("cifar10", root=str(tmp_path / "nosplit")))
    write_jpeg_folders(tmp_path / "bad")
    (tmp_path / "bad" / "test" / "dog" / "0000.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(DataError, match="0000.jpg: cannot decode image"):
        load_data(DataConfig("cifar10", root=str(tmp_path / "bad")))


# ---------------------------------------------------------------- missing data


@pytest.mark.parametrize("name, words", [
    ("mnist", "MNIST/raw"), ("fashion-mnist", "apt-get install"), ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"), ("imagenet", "train/<wnid>"),
])
def test_missing_data_is_a_one_line_error_naming_the_path(tmp_path, name, words):
    for root in (tmp_path / "absent", tmp_path):
        with pytest.raises(DataError, match=words) as e:
            load_data(DataConfig(name, root=str(root)))
        assert str(root) in str(e.value) and "\n" not in str(e.value)


def test_mnist_without_a_folder_says_how_to_give_one():
    with pytest.raises(DataError, match="data.root"):
        load_data(DataConfig("mnist"))


# ---------------------------------------------------------------- ImageNet


def test_imagenet_loaders_give_standard_batches(tmp_path):
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(2):
                image = torch.full((3, 300, 260), 40 * k, dtype=torch.uint8)
                write_jpeg(image, str(tmp_path / split / c / f"{k}.JPEG"))
    with pytest.raises(DataError, match="imagenet_loaders"):  # the tensor registry points to the loaders
        load_data(DataConfig("imagenet", root=str(tmp_path)))
    train, val = imagenet_loaders(tmp_path, batch_size=3, eval_batch_size=4, workers=0)
    x, y = next(iter(train))
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.long
    assert len(train) == 1  # 4 images, batches of 3, the partial one dropped
    # resumable: a rebuilt loader given the state continues with the same images and the same random crops
    state, later = train.state_dict(), [b for _ in range(3) for b in train]  # epochs 1, 2 and 3
    again, _ = imagenet_loaders(tmp_path, batch_size=3, eval_batch_size=4, workers=0)
    again.load_state_dict(state)
    assert state["epoch"] == 0 and state["batch"] == 1
    resumed = [b for _ in range(3) for b in again]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(later, resumed))
    assert len(later) == 3 and not torch.equal(later[0][0], later[1][0])
    x, y = next(iter(val))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1] and type(x) is torch.Tensor
    black = (0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 112, 112], black)


# ---------------------------------------------------------------- augmentation


def test_augment_names():
    assert augment(None) is None and augment("none") is None and augment("crop-flip") is crop_flip
    assert default_augmentation("cifar10") == "crop-flip" and default_augmentation("mnist") == "none"
    with pytest.raises(ConfigError, match="crop-flip"):
        augment("mixup")


def test_random_crop_is_a_shifted_window_of_the_reflect_padded_image():
    x = torch.randn(64, 3, 8, 8)
    out = random_crop(x, 2, "reflect", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2,) * 4, mode="reflect")
    shifts = []
    for i in range(64):
        hits = [(a, b) for a in range(5) for b in range(5) if torch.equal(out[i], padded[i, :, a:a + 8, b:b + 8])]
        assert hits, f"sample {i} is not a crop"
        shifts.append(hits[0])
    assert len(set(shifts)) > 10  # offsets differ between samples


def test_random_flip_mirrors_about_half_the_samples():
    x = torch.randn(200, 3, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ same).all()) and 60 < int(flipped.sum()) < 140


def test_crop_flip_is_reproducible_with_a_generator():
    x = torch.randn(16, 3, 32, 32)
    a = crop_flip(x, generator=torch.Generator().manual_seed(3))
    b = crop_flip(x, generator=torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def is_crop_flip_of(out: torch.Tensor, x: torch.Tensor) -> bool:
    """Every sample of ``out`` is a 32x32 window of its 4-pixel reflect-padded ``x`` sample, maybe mirrored."""
    padded = torch.nn.functional.pad(x, (4,) * 4, mode="reflect")
    return all(any(torch.equal(o, padded[i, :, a:a + 32, b:b + 32].flip(2) if f else padded[i, :, a:a + 32, b:b + 32])
                   for a in range(9) for b in range(9) for f in (0, 1)) for i, o in enumerate(out))


def test_augmented_train_r_batches_keep_labels_and_the_sources_kind():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]
    stream = BatchStream(Split(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])), 4)
    assert augmented(batches, "none") is batches and augmented(stream, None) is stream  # the paper's default
    assert PathConfig().augment is False
    assert C.from_dict(PathConfig, {"augment": True}).augment is True and "augment" in C.to_dict(PathConfig())
    with pytest.raises(ConfigError, match="augment"):
        C.from_dict(PathConfig, {"augment": "crop-flip"})

    over_list = augmented(batches, "crop-flip", torch.Generator().manual_seed(5))
    first, second = list(over_list), list(over_list)  # a re-iterable source stays re-iterable: two passes
    assert len(first) == len(second) == 3
    for (x, y), (ax, ay), (bx, by) in zip(batches, first, second):
        assert ay is y and by is y and is_crop_flip_of(ax, x) and is_crop_flip_of(bx, x)
        assert not torch.equal(ax, x) and not torch.equal(ax, bx)  # fresh draws on every pass
    # the draws are the augmentation's, in batch order, from the one generator
    ref = torch.Generator().manual_seed(5)
    assert all(torch.equal(ax, crop_flip(x, generator=ref)) for (x, _), (ax, _) in zip(batches, first))

    over_stream = augmented(stream, "crop-flip", torch.Generator().manual_seed(5))
    assert iter(over_stream) is over_stream  # a stream stays a stream
    plain = BatchStream(stream.split, 4)
    for _ in range(5):  # across an epoch boundary of the stream (3 batches per epoch)
        (ax, ay), (x, y) = next(over_stream), next(plain)
        assert torch.equal(ay, y) and is_crop_flip_of(ax, x)


def test_augmented_batches_resume_with_the_same_draws():
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    source = [(x, torch.zeros(8, dtype=torch.long))] * 4
    whole = [b[0] for b in augmented(source, "crop-flip", torch.Generator().manual_seed(2))]
    a = augmented(source, "crop-flip", torch.Generator().manual_seed(2))
    it = iter(a)
    head = [next(it)[0] for _ in range(2)]
    state = torch.load(_roundtrip(a.state_dict()), weights_only=True)
    b = augmented(source[2:], "crop-flip", torch.Generator().manual_seed(99))
    b.load_state_dict(state)
    tail = [t[0] for t in b]
    assert all(torch.equal(u, v) for u, v in zip(head + tail, whole)) and len(head + tail) == 4


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
