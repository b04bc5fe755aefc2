"""A class-balanced subset of CIFAR-10's JPEG archive, as ``train/<class>/`` and ``test/<class>/`` folders.

``[data] limit_train`` keeps the first N images, and the image-folder layout
lists them class by class, so on the JPEG archive it would keep one class.
This copies the first ``--train`` and ``--test`` files of every class (in
sorted file-name order, the same each time) without re-encoding them; point
``[data] root`` (or ``--data-dir``) at ``--out``.

    python benchmarks/cifar10_subset.py ../shared/data/cifar10-jpg.tar.xz --train 250 --test 100 --out DIR
"""
from __future__ import annotations

import argparse
import tarfile
from collections import defaultdict
from pathlib import Path, PurePosixPath


def subset(archive: Path, per_split: dict[str, int], out: Path) -> dict[str, int]:
    """Copy the first ``per_split[split]`` images of each class of ``archive`` into ``out``; the counts written.

    Two passes over the archive, both in order (a compressed tar does not seek
    back cheaply): the names, then the chosen files.
    """
    with tarfile.open(archive) as tar:
        by_class: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name in tar.getnames():
            parts = PurePosixPath(name).parts
            if len(parts) == 3 and parts[0] in per_split:
                by_class[parts[:2]].append(name)
    chosen = {n for (split, _), names in by_class.items() for n in sorted(names)[:per_split[split]]}
    written: dict[str, int] = defaultdict(int)
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            if member.name in chosen and member.isfile():
                split, cls, file = PurePosixPath(member.name).parts
                (out / split / cls).mkdir(parents=True, exist_ok=True)
                (out / split / cls / file).write_bytes(tar.extractfile(member).read())
                written[split] += 1
    return dict(written)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", type=Path, help="cifar10-jpg.tar.xz (train/<class>/*.jpg, test/<class>/*.jpg)")
    ap.add_argument("--train", type=int, required=True, help="training images per class")
    ap.add_argument("--test", type=int, required=True, help="test images per class")
    ap.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose another --out")
    counts = subset(args.archive, {"train": args.train, "test": args.test}, args.out)
    print(f"wrote {counts.get('train', 0)} training and {counts.get('test', 0)} test images under {args.out}")


if __name__ == "__main__":
    main()
