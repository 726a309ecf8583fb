"""Datasets: in-memory arrays, real loaders with download/checksum/cache, one registry.

``load_dataset(name, root=None, download=False, **options) -> (train, test)`` returns
two :class:`ArrayDataset` (float32 inputs already normalised, int64 labels; for
Shakespeare int64 character indices). Files live under a data root: ``root``, else
``$FEDECON_DATA``, else ``~/.cache/fedecon`` (see :mod:`fl.data.download`).

======================  =========================  ==============  =================
name                    inputs (per sample)        train / test    loader
======================  =========================  ==============  =================
``digits`` (default)    (1, 8, 8)                  1438 / 359      :func:`load_digits`
``mnist``               (1, 28, 28)                60000 / 10000   :func:`load_mnist`
``fashion_mnist``       (1, 28, 28)                60000 / 10000   :func:`load_fashion_mnist`
``usps``                (1, 16, 16)                7291 / 2007     :func:`load_usps`
``mnist1d``             (1, 40)                    4000 / 1000     :func:`load_mnist1d`
``cifar10``             (3, 32, 32)                50000 / 10000   :func:`load_cifar10`
``shakespeare``         (80,) character indices    per role        :func:`load_shakespeare`
======================  =========================  ==============  =================

``digits`` ships with scikit-learn and ignores ``root`` and ``download``. The natural
partition of Shakespeare (one client per role) comes from
:func:`load_shakespeare_clients`.
"""

from __future__ import annotations

import inspect
import os
from typing import Callable

from fl.checks import check_options
from fl.data.cifar10 import CIFAR10_CLASSES, load_cifar10
from fl.data.dataset import ArrayDataset, Subset, load_digits
from fl.data.download import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    data_root,
    file_digest,
    verify_checksum,
)
from fl.data.mnist import load_fashion_mnist, load_mnist
from fl.data.mnist1d import load_mnist1d
from fl.data.shakespeare import VOCABULARY, ShakespeareClients, load_shakespeare, load_shakespeare_clients
from fl.data.usps import load_usps

_LOADERS: dict[str, Callable[..., tuple[ArrayDataset, ArrayDataset]]] = {
    "digits": lambda root=None, download=False, **options: load_digits(**options),
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "usps": load_usps,
    "mnist1d": load_mnist1d,
    "cifar10": load_cifar10,
    "shakespeare": load_shakespeare,
}
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


def _options(name: str) -> tuple[str, ...]:
    """The options (keywords besides ``root`` and ``download``) the loader of dataset ``name`` takes."""
    # these two pass their options on: digits' to load_digits, Shakespeare's to load_shakespeare_clients
    loader = {"digits": load_digits, "shakespeare": load_shakespeare_clients}.get(name, _LOADERS[name])
    return tuple(key for key in inspect.signature(loader).parameters if key not in ("root", "download"))


def load_dataset(
    name: str, root: str | os.PathLike | None = None, download: bool = False, **options
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of dataset ``name`` (one of ``DATASET_NAMES``); see the table above.

    ``options`` go to the dataset's loader: e.g. ``verify=False`` for the datasets read
    from files (not ``digits`` or ``shakespeare``), ``source="jpeg"`` for CIFAR-10,
    ``max_clients=100`` for Shakespeare, ``seed`` and ``test_fraction`` for digits; an
    option the loader does not take raises ValueError naming it and those it takes.
    Missing files raise :class:`DatasetNotFoundError` naming the path and the
    ``download=True`` option; a bad file raises :class:`ChecksumError`.
    """
    if not isinstance(name, str) or name not in _LOADERS:
        raise ValueError(f"dataset={name!r}: allowed is one of {', '.join(DATASET_NAMES)}")
    check_options(f"dataset={name!r}", options, _options(name))
    return _LOADERS[name](root=root, download=download, **options)


__all__ = [
    "ArrayDataset",
    "Subset",
    "DATASET_NAMES",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_usps",
    "load_mnist1d",
    "load_cifar10",
    "load_shakespeare",
    "load_shakespeare_clients",
    "ShakespeareClients",
    "VOCABULARY",
    "CIFAR10_CLASSES",
    "ChecksumError",
    "DatasetNotFoundError",
    "DownloadError",
    "data_root",
    "file_digest",
    "verify_checksum",
]
