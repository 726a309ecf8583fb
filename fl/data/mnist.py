"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao, Rasul & Vollgraf 2017).

Both are 60,000 training and 10,000 test 28x28 grey images in 10 classes, stored as
four IDX files (see :mod:`fl.data.idx`) under ``<root>/mnist`` and
``<root>/fashion-mnist``, gzip-compressed (``*.gz``) or raw (same names without
``.gz``). Every file is checked against the sha256 of its *uncompressed* contents, so
the official archives and any re-compressed copy of the same data pass.

Returned inputs: float32 of shape (n, 1, 28, 28), pixels scaled to [0, 1] and then
standardised with the training split's mean and std (MNIST: 0.1307 / 0.3081;
Fashion-MNIST: 0.2860 / 0.3530); labels int64 in [0, 10).
"""

from __future__ import annotations

import os

from fl.checks import check_bool
from fl.data.arrays import standardised_pair
from fl.data.dataset import ArrayDataset
from fl.data.download import ChecksumError, RemoteFile, data_root, fetch
from fl.data.idx import read_idx

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

# sha256 of the uncompressed IDX contents (the same list as ../shared/data/README.md).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def idx_files(mirrors: tuple[str, ...], sha256: dict[str, str]) -> dict[str, RemoteFile]:
    """The four IDX files of one dataset, keyed by their uncompressed names."""
    return {
        stem: RemoteFile(f"{stem}.gz", tuple(m + f"{stem}.gz" for m in mirrors), digest, "sha256", decompressed=True)
        for stem, digest in sha256.items()
    }


def load_idx_dataset(
    name: str,
    folder: str,
    files: dict[str, RemoteFile],
    root: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = True,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) from four IDX files in ``<root>/<folder>``; see the module docstring.
    ValueError unless ``download`` and ``verify`` are True or False."""
    check_bool("download", download)
    check_bool("verify", verify)
    directory = data_root(root) / folder
    arrays = {}
    for stem, remote in files.items():
        # fetch() downloads (and then checks) missing files; read_idx checks what it parses.
        path = fetch(directory, remote, download_missing=download, verify=False)
        arrays[stem] = read_idx(path, remote.checksum if verify else None)
    train_x, test_x = arrays["train-images-idx3-ubyte"][:, None], arrays["t10k-images-idx3-ubyte"][:, None]
    train_y, test_y = arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    try:
        return standardised_pair(name, train_x, train_y, test_x, test_y, 10)
    except ValueError as error:  # unchecked (verify=False): a labels file of the other split, a label of 200
        raise ChecksumError(f"{directory}: its IDX files do not hold {name}'s splits ({error}); one is truncated, "
                            "corrupt or of another set: verify=True names the file whose digest differs") from None


def load_mnist(
    root: str | os.PathLike | None = None, download: bool = False, verify: bool = True
) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST: 60,000 / 10,000 images of shape (1, 28, 28), 10 digit classes."""
    return load_idx_dataset("mnist", "mnist", idx_files(MNIST_MIRRORS, MNIST_SHA256), root, download, verify)


def load_fashion_mnist(
    root: str | os.PathLike | None = None, download: bool = False, verify: bool = True
) -> tuple[ArrayDataset, ArrayDataset]:
    """Fashion-MNIST: 60,000 / 10,000 images of shape (1, 28, 28), 10 clothing classes."""
    files = idx_files(FASHION_MNIST_MIRRORS, FASHION_MNIST_SHA256)
    return load_idx_dataset("fashion_mnist", "fashion-mnist", files, root, download, verify)
