"""CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images").

50,000 training and 10,000 test 32x32 RGB images, 10 classes (``CIFAR10_CLASSES``, in
the official label order). Two on-disk forms are read, both under ``<root>/cifar10``:

- the official python archive ``cifar-10-python.tar.gz`` (md5
  c58f30108f718f92721af3b95e74349a, downloadable from Krizhevsky's page) or its
  extracted folder ``cifar-10-batches-py/``: pickled dicts ``data_batch_1`` ...
  ``data_batch_5`` and ``test_batch``, each with ``b'data'`` (n, 3072) uint8, rows
  holding the red, green and blue 32x32 planes, and ``b'labels'`` (n ints);
- a tree of image files ``cifar10-jpg/{train,test}/<class>/NNNN.jpg``, as a tarball
  ``cifar10-jpg.tar.gz`` or an extracted folder (the project's offline copy; JPEG
  quality 75, so lossy; no public download). Images are decoded with Pillow straight
  from the tarball, no extraction needed.

Decoding is done once: the uint8 arrays are cached as ``<name>.decoded.npz`` in a
cache folder (``<root>/cifar10`` when writable, else ``~/.cache/fedecon/cache/cifar10``
or the ``cache`` argument); later loads read that file (well under a second).
It is rebuilt when the source changes (another size or modification time of the file,
or of any file under the folder), when ``verify`` asks for a checksum that the cache
was built without, and when it cannot be read (a damaged cache); the checksum (of a
tarball: an extracted folder has none) is verified when the cache is built. A tarball
that is truncated or damaged, or a batch file of an extracted python folder that is
(or a folder missing one), raises :class:`~fl.data.download.ChecksumError` naming it.
So does an image tree read whole (no ``limit_per_class``) that does not hold 5,000 train
and 1,000 test images of every class (a class folder missing or misnamed, an extraction
cut short: the only check an extracted folder gets), naming each class and its count,
and an image file that cannot be decoded, naming the file.

Returned inputs: float32 of shape (n, 3, 32, 32), pixels scaled to [0, 1] and
standardised per channel with the training split's mean and std (official data:
mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616)); labels int64 in [0, 10).
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fl.checks import check_bool, check_integer
from fl.data.arrays import standardised_pair
from fl.data.dataset import ArrayDataset
from fl.data.download import (
    GZIP_ERRORS,
    DatasetNotFoundError,
    RemoteFile,
    cache_dir,
    damaged_file,
    data_root,
    fetch,
    remove_stale_parts,
    verify_checksum,
)
from fl.data.pickles import DAMAGED_PICKLE_ERRORS, load_data_pickle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_PYTHON = RemoteFile(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    "c58f30108f718f92721af3b95e74349a",
    "md5",
)
CIFAR10_JPEG = RemoteFile(
    "cifar10-jpg.tar.gz", (), "fffb82088ccca82341cb5c16aa37eea9db644305e4b27124eb6bdde322e63ffe", "sha256"
)
CIFAR10_SOURCES = ("auto", "python", "jpeg")
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # "train"/"test" -> (x uint8 (n,3,32,32), y int64 (n,))


@contextmanager
def _tarball(path: str | os.PathLike):
    """``path`` opened with tarfile (any compression); :class:`~fl.data.download.ChecksumError`
    naming it when it is truncated, damaged or no tarball, on opening or while reading."""
    try:
        with tarfile.open(path, "r:*") as archive:
            yield archive
    except (tarfile.TarError, *GZIP_ERRORS) as error:
        raise damaged_file(path, f"not a readable tarball ({error})") from None


# ---------------------------------------------------------------- official python batches
def _batch_arrays(data: bytes, path: Path, member: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 of one pickled batch ``data``, read from
    ``path`` (from its ``member`` when ``path`` is an archive); :class:`~fl.data.download.ChecksumError`
    naming them when it is not a CIFAR-10 python batch (a file cut short or damaged)."""
    try:
        batch = load_data_pickle(data, encoding="bytes")
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except DAMAGED_PICKLE_ERRORS as error:
        where = f"its member {member} is " if member else ""
        raise damaged_file(path, f"{where}not a CIFAR-10 python batch ({type(error).__name__}: {error})") from None
    return x, y


def _join_batches(batches: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Splits:
    missing = [name for name in (*_TRAIN_BATCHES, "test_batch") if name not in batches]
    if missing:
        raise damaged_file(path, f"CIFAR-10 python batches missing: {missing}")
    train = [batches[name] for name in _TRAIN_BATCHES]
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": batches["test_batch"],
    }


def read_python_archive(path: str | os.PathLike) -> Splits:
    """uint8 images (n, 3, 32, 32) and labels of the official ``cifar-10-python.tar.gz``;
    :class:`~fl.data.download.ChecksumError` naming it (and the member) when it is damaged
    or misses a batch."""
    path, batches = Path(path), {}
    with _tarball(path) as archive:
        for member in archive:
            name = Path(member.name).name
            if member.isfile() and name in (*_TRAIN_BATCHES, "test_batch"):
                batches[name] = _batch_arrays(archive.extractfile(member).read(), path, member.name)
    return _join_batches(batches, path)


def read_python_folder(folder: str | os.PathLike) -> Splits:
    """Same as :func:`read_python_archive` for the extracted ``cifar-10-batches-py/``
    (the error names the damaged batch file, or the folder missing batches)."""
    folder, batches = Path(folder), {}
    for name in (*_TRAIN_BATCHES, "test_batch"):
        path = folder / name
        if path.is_file():
            batches[name] = _batch_arrays(path.read_bytes(), path)
    return _join_batches(batches, folder)


# ---------------------------------------------------------------- image files (JPEG/PNG)
CIFAR10_PER_CLASS = {"train": 5000, "test": 1000}  # images of each class in each split of the published dataset
# What Pillow raises on image data that is cut short, damaged or no image: OSError (UnidentifiedImageError,
# "Truncated File Read"), SyntaxError (a broken PNG), ValueError and EOFError.
_DAMAGED_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def _decode_image(data: bytes, path: Path, member: str = "") -> np.ndarray:
    """(3, 32, 32) uint8 RGB pixels of the image file ``data``, read from ``path`` (from its
    ``member`` when ``path`` is an archive); :class:`~fl.data.download.ChecksumError` naming
    them when it is no readable 32x32 image."""
    from PIL import Image

    where = f"its member {member} is " if member else ""
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except _DAMAGED_IMAGE_ERRORS as error:
        raise damaged_file(path, f"{where}not a readable image ({type(error).__name__}: {error})") from None
    if array.shape != (32, 32, 3):
        height, width = array.shape[:2]
        raise damaged_file(path, f"{where}an image of {width}x{height} pixels; CIFAR-10 images are 32x32")
    return array.transpose(2, 0, 1)


def _image_files(files, limit_per_class: int | None) -> Splits:
    """Decode (path parts, read-bytes callable, path, archive member or "") tuples laid out
    as <split>/<class>/<file>."""
    found: dict[str, list[tuple[int, str, np.ndarray]]] = {"train": [], "test": []}
    taken: dict[tuple[str, int], int] = {}
    for parts, read, path, member in files:
        if len(parts) < 3 or parts[-3] not in found or parts[-2] not in CIFAR10_CLASSES:
            continue
        if not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        split, label = parts[-3], CIFAR10_CLASSES.index(parts[-2])
        if limit_per_class is not None and taken.get((split, label), 0) >= limit_per_class:
            continue
        taken[(split, label)] = taken.get((split, label), 0) + 1
        found[split].append((label, parts[-1], _decode_image(read(), path, member)))
        if limit_per_class is not None and sum(taken.values()) == 2 * len(CIFAR10_CLASSES) * limit_per_class:
            break  # every class of both splits is full: stop reading the archive
    splits = {}
    for split, items in found.items():
        if not items:
            raise ValueError(f"no images found for split {split!r} (expected {split}/<class>/<file>.jpg)")
        items.sort(key=lambda item: (item[0], item[1]))
        splits[split] = (np.stack([a for _, _, a in items]), np.array([lab for lab, _, _ in items], dtype=np.int64))
    return splits


def _check_complete(splits: Splits, source: Path) -> None:
    """:class:`~fl.data.download.ChecksumError` naming ``source`` and each class of a split
    whose image count differs from the published one (:data:`CIFAR10_PER_CLASS`): a
    class folder missing or misnamed, or an extraction cut short."""
    wrong = [
        f"{split}/{CIFAR10_CLASSES[label]} holds {count}"
        for split, want in CIFAR10_PER_CLASS.items()
        for label, count in enumerate(np.bincount(splits[split][1], minlength=len(CIFAR10_CLASSES)))
        if count != want
    ]
    if wrong:
        raise damaged_file(source, f"{', '.join(wrong)} images; CIFAR-10 has {CIFAR10_PER_CLASS['train']} of each "
                                   f"class in train/<class>/ and {CIFAR10_PER_CLASS['test']} in test/<class>/, "
                                   f"classes {', '.join(CIFAR10_CLASSES)} (limit_per_class reads a subset)")


def read_image_tree(source: str | os.PathLike, limit_per_class: int | None = None) -> Splits:
    """uint8 images (n, 3, 32, 32) and labels from ``{train,test}/<class>/*.jpg``.

    ``source`` is a tarball (any compression tarfile reads) or a folder holding the tree
    (at its top or one level down, e.g. ``cifar10-jpg/``). Samples are ordered by class,
    then file name. ``limit_per_class`` keeps the first N files of each class and split
    met while reading (a quick subset for tests and smoke runs); without it, every class
    must hold the published count (:data:`CIFAR10_PER_CLASS`: 5,000 train and 1,000 test
    images), else :class:`~fl.data.download.ChecksumError` naming ``source``, each class
    and its count. A file that is no readable 32x32 image raises one naming the file.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        splits = _image_files(((p.parts, p.read_bytes, p, "") for p in files), limit_per_class)
    else:
        with _tarball(source) as archive:

            def members():
                for member in archive:
                    if member.isfile():
                        yield tuple(member.name.split("/")), archive.extractfile(member).read, source, member.name

            splits = _image_files(members(), limit_per_class)
    if limit_per_class is None:
        _check_complete(splits, source)
    return splits


# ---------------------------------------------------------------- cache and loader
def _fingerprint(source: Path) -> str:
    """What identifies ``source``'s contents without reading them: the size (bytes) and
    modification time (ns) of the file, or of every file under the folder, by path."""
    if source.is_dir():
        files = [(str(p.relative_to(source)), p) for p in sorted(source.rglob("*")) if p.is_file()]
    else:
        files = [(source.name, source)]
    stats = ((name, p.stat()) for name, p in files)
    return "\n".join(f"{name} {stat.st_size} {stat.st_mtime_ns}" for name, stat in stats)


def _cached(source: Path, cache: Path, build, verified: bool) -> Splits:
    """Decoded arrays of ``source``, from ``cache`` when it can be read, was built from the
    same :func:`_fingerprint` and, if ``verified`` is asked for, with the checksum verified;
    else ``build()`` (which verifies when ``verified``) and store the result."""
    fingerprint = _fingerprint(source)
    if cache.is_file():
        try:
            with np.load(cache) as stored:
                current = "fingerprint" in stored.files and str(stored["fingerprint"]) == fingerprint
                if current and (bool(stored["verified"]) or not verified):
                    return {s: (stored[f"{s}_x"], stored[f"{s}_y"]) for s in ("train", "test")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache (cut short, overwritten) is stale: rebuilt below
    splits = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(cache.parent, f".{cache.name}.", ".part")  # left by a process killed while writing
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.part")
    try:
        with open(partial, "wb") as stream:
            arrays = {f"{s}_{k}": a for s, (x, y) in splits.items() for k, a in (("x", x), ("y", y))}
            np.savez(stream, fingerprint=np.str_(fingerprint), verified=np.bool_(verified), **arrays)
        os.replace(partial, cache)
    finally:
        partial.unlink(missing_ok=True)  # a write or rename that failed leaves no partial file
    return splits


def _locate(folder: Path, source: str, download: bool) -> tuple[Path, str]:
    """The file or folder to read and its kind ("python" or "jpeg")."""
    if source not in CIFAR10_SOURCES:
        raise ValueError(f"source={source!r}: allowed is one of {CIFAR10_SOURCES}")
    candidates = {
        "python": [folder / CIFAR10_PYTHON.filename, folder / "cifar-10-batches-py"],
        "jpeg": [folder / CIFAR10_JPEG.filename, folder / "cifar10-jpg"],
    }
    kinds = ("python", "jpeg") if source == "auto" else (source,)
    for kind in kinds:
        for path in candidates[kind]:
            if path.exists():
                return path, kind
    if download and "python" in kinds:
        return fetch(folder, CIFAR10_PYTHON, download_missing=True), "python"
    looked = ", ".join(str(p) for kind in kinds for p in candidates[kind])
    hint = f"pass download=True to fetch {CIFAR10_PYTHON.urls[0]}" if "python" in kinds else "place it there by hand"
    raise DatasetNotFoundError(f"CIFAR-10 not found: looked for {looked}; {hint}")


def load_cifar10(
    root: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = True,
    source: str = "auto",
    cache: str | os.PathLike | None = None,
    limit_per_class: int | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10: 50,000 / 10,000 images of shape (3, 32, 32), 10 classes.

    ``source``: "python" (official archive or folder), "jpeg" (image tree), or "auto"
    (the official one when present, else the images). ``cache``: folder for the decoded
    arrays (see the module docstring). ``limit_per_class``: decode only the first N
    images of each class per split (image trees only; not cached, but a tarball is
    still verified when ``verify``).
    """
    check_integer("limit_per_class", limit_per_class, optional=True)
    check_bool("download", download)
    check_bool("verify", verify)
    folder = data_root(root) / "cifar10"
    path, kind = _locate(folder, source, download)
    verified = verify and path.is_file()  # an extracted folder has no checksum

    def check() -> None:
        if verified:
            remote = CIFAR10_PYTHON if kind == "python" else CIFAR10_JPEG
            verify_checksum(path, remote.checksum, remote.algorithm)

    if limit_per_class is not None:
        if kind != "jpeg":
            raise ValueError(f"limit_per_class={limit_per_class!r}: allowed is None unless source is an image tree")
        check()
        splits = read_image_tree(path, limit_per_class)
    else:

        def build() -> Splits:
            check()
            if kind == "python":
                return read_python_archive(path) if path.is_file() else read_python_folder(path)
            return read_image_tree(path)

        cache_file = cache_dir(folder, cache) / f"{path.name}.decoded.npz"
        splits = _cached(path, cache_file, build, verified)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    return standardised_pair("cifar10", train_x, train_y, test_x, test_y, 10, per_channel=True)
