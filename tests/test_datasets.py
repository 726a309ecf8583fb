"""Dataset loaders on the project's offline copies (../shared/data), plus the
download, checksum and archive-format code paths on files written to tmp_path.

No mocks: downloads go through urllib with file:// URLs, or http:// ones served on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fl.data as data
from fl.data.arrays import standardised_pair
from fl.data.cifar10 import CIFAR10_CLASSES, load_cifar10, read_image_tree, read_python_archive, read_python_folder
from fl.data.download import (STALE_PART_SECONDS, ChecksumError, DatasetNotFoundError, DownloadError, RemoteFile,
                              download, fetch)
from fl.data.idx import read_idx
from fl.data.mnist import MNIST_SHA256, idx_files, load_idx_dataset
from fl.data.partition import holdout
from fl.data.pickles import load_data_pickle
from fl.data.shakespeare import SEQUENCE_LENGTH, VOCABULARY, decode, load_shakespeare_clients, parse_play, read_roles

from conftest import SHARED_DATA, require_data

# sha256 of the files as stored in ../shared/data (its README)
STORED_SHA256 = {
    "mnist/t10k-labels-idx1-ubyte.gz": "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
    "usps/zip.test.gz": "8dacc3c6e136af6c3488de9e5113a7daf140c8c2f1f0b61c54ee02f03f1a962f",
    "mnist1d/mnist1d_data.pkl": "e95257676e9fb04568e46dda007da22cc8664ccba1451456afde55d7f6dd6aa5",
}


@pytest.fixture(scope="session")
def shared_root() -> Path:
    return require_data(SHARED_DATA, "the offline dataset copies (../shared/data beside the project)")


def need(root: Path, folder: str) -> Path:
    return require_data(root / folder, f"{folder!r} of the offline dataset copies")


# ---------------------------------------------------------------- registry and errors
def test_registry_lists_every_dataset_and_rejects_unknown_names():
    assert data.DATASET_NAMES == ("digits", "mnist", "fashion_mnist", "usps", "mnist1d", "cifar10", "shakespeare")
    with pytest.raises(ValueError, match=r"dataset='x': allowed is one of digits, mnist"):
        data.load_dataset("x")
    train, test = data.load_dataset("digits")
    assert train.feature_shape == (1, 8, 8) and len(train) + len(test) == 1797


@pytest.mark.parametrize("call, message", [
    (lambda: data.load_dataset(["mnist"]), r"dataset=\['mnist'\]: allowed is one of digits"),  # was unhashable type
    (lambda: data.load_dataset("mnist", root=3), "root=3: allowed is a folder path"),  # was expected str, bytes ...
    (lambda: data.load_dataset("mnist", root=True), "root=True: allowed is a folder path"),
    (lambda: data.load_dataset("cifar10", root=SHARED_DATA, cache=5), "cache=5: allowed is a folder path"),
])
def test_a_name_root_or_cache_of_the_wrong_type_is_named(call, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        call()


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "usps", "mnist1d", "cifar10"])
def test_missing_files_name_the_path_and_the_download_option(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match="download=True") as error:
        data.load_dataset(name, root=tmp_path)
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize("download", [False, True])
def test_a_dataset_folder_that_is_a_file_or_a_file_that_is_a_folder_is_named(tmp_path, download):
    """root/usps a file: "zip.train.gz not found", and with download=True a bare
    FileExistsError; a folder in the place of mnist's first file: "not found". Each names
    the path and what it should be; nothing is fetched or written."""
    (tmp_path / "usps").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match=rf"^{re.escape(str(tmp_path / 'usps'))} is a file: allowed is a "
                       rf"folder there, {re.escape(str(tmp_path / 'usps'))} holding zip.train.gz; move it away$"):
        data.load_dataset("usps", root=tmp_path, download=download)
    taken = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    taken.mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=rf"^{re.escape(str(taken))} is a folder: allowed is the file "
                       r"train-images-idx3-ubyte.gz there; move the folder away$"):
        data.load_dataset("mnist", root=tmp_path, download=download)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mnist", "train-images-idx3-ubyte.gz", "usps"]
    root = tmp_path / "root"  # a data root that is a file: a bare NotADirectoryError, "not found", "no plays"
    root.write_bytes(b"")
    for name in ("mnist1d", "cifar10", "shakespeare"):
        with pytest.raises(DatasetNotFoundError, match=rf"^{re.escape(str(root))} is a file: allowed is a folder "
                           rf"there, the data root {re.escape(str(root))} holding each dataset's folder; move it away "
                           "or give another data root$"):
            data.load_dataset(name, root=root, download=download)
    dangling = tmp_path / "dangling"  # a symbolic link to nothing: mkdir's bare FileExistsError with download=True
    dangling.symlink_to(tmp_path / "nothing")
    with pytest.raises(DatasetNotFoundError, match=rf"^{re.escape(str(dangling))} is a symbolic link to no folder: "):
        data.load_dataset("mnist", root=dangling, download=download)


def test_data_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDECON_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    monkeypatch.delenv("FEDECON_DATA")
    assert data.data_root() == Path.home() / ".cache" / "fedecon"


def test_options_a_loader_does_not_take_are_named_with_those_it_takes(tmp_path):
    with pytest.raises(ValueError, match=r"^verify=False: not an option of dataset='digits'; allowed are "
                                         r"test_fraction, seed$"):
        data.load_dataset("digits", verify=False)  # was a raw TypeError, though the docstring offered it
    with pytest.raises(ValueError, match=r"^seed=1: not an option of dataset='mnist'; allowed are verify$"):
        data.load_dataset("mnist", root=tmp_path, seed=1)
    with pytest.raises(ValueError, match=r"shuffle=True: not an option of dataset='shakespeare'; .*max_clients"):
        data.load_dataset("shakespeare", root=tmp_path, shuffle=True)
    train, test = data.load_dataset("digits", test_fraction=0.5, seed=1)
    assert (len(train), len(test)) == (899, 898)


@pytest.mark.parametrize("fraction", [0.002, 0.999])
def test_digits_split_keeps_every_class_in_train_and_test(fraction):
    # 0.002 of 174-183 samples a class rounds to an empty test set; 0.999 to an empty train set (NaN inputs)
    with pytest.raises(ValueError, match=rf"^test_fraction={fraction}: allowed is a share that leaves train and "
                                         "test a sample of every class"):
        data.load_digits(test_fraction=fraction)
    train, test = data.load_digits(test_fraction=0.0056)  # rounds to one sample of every class in test
    assert torch.equal(torch.unique(test.y), torch.arange(10)) and len(test) == 10
    assert torch.isfinite(train.x).all()


def test_digits_split_is_the_stratified_holdout_standardised_by_the_train_statistics():
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    train, test = data.load_digits(test_fraction=0.25, seed=3)
    kept, held = holdout(bunch.target, 0.25, 3)
    assert torch.equal(train.y, torch.from_numpy(bunch.target[np.sort(kept)]))
    assert torch.equal(test.y, torch.from_numpy(bunch.target[np.sort(held)]))
    pixels = bunch.images[np.sort(kept)] / 16.0
    assert abs(train.x.mean().item()) < 1e-5 and abs(train.x.std(unbiased=False).item() - 1) < 1e-5
    expected = (bunch.images[np.sort(held)] / 16.0 - pixels.mean()) / pixels.std()
    np.testing.assert_allclose(test.x[:, 0].numpy(), expected, rtol=0, atol=1e-5)


def test_download_and_verify_flags_are_true_or_false(shared_root, tmp_path):
    """A string such as 'no' counted as true: verify='no' verified, download='no' fetched a missing file.
    MNIST and Fashion-MNIST took any value: verify=0 or None skipped the checksum without a word."""
    for name in ("mnist", "fashion_mnist", "usps", "mnist1d", "cifar10"):
        for value in ("no", 0, None):
            with pytest.raises(ValueError, match=rf"^verify={value!r}: allowed is True or False$"):
                data.load_dataset(name, root=tmp_path, verify=value)
    (tmp_path / "cifar10").mkdir()
    write_cifar_python_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", per_batch=2)
    for name, root in (("cifar10", tmp_path), ("mnist1d", shared_root), ("usps", shared_root),
                       ("mnist", shared_root), ("fashion_mnist", shared_root)):
        with pytest.raises(ValueError, match=r"^download='no': allowed is True or False$"):
            data.load_dataset(name, root=root, download="no", verify=False)


# ---------------------------------------------------------------- checksums
def test_checksums_of_the_shared_files_pass(shared_root):
    for relative, digest in STORED_SHA256.items():
        data.verify_checksum(need(shared_root, relative), digest)
    # decompressed contents of the re-compressed MNIST copies equal the official ones
    path = shared_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data.verify_checksum(path, MNIST_SHA256["t10k-labels-idx1-ubyte"], decompress=True)
    # official Fashion-MNIST archive md5
    data.verify_checksum(need(shared_root, "fashion-mnist") / "t10k-labels-idx1-ubyte.gz",
                         "bb300cfdad3c16e7a12a480ee83cd310", "md5")


def test_checksums_fail_on_a_corrupted_file(shared_root, tmp_path):
    raw = gzip.decompress((need(shared_root, "mnist") / "t10k-labels-idx1-ubyte.gz").read_bytes())
    good = tmp_path / "t10k-labels-idx1-ubyte"
    good.write_bytes(raw)
    assert read_idx(good, MNIST_SHA256["t10k-labels-idx1-ubyte"]).shape == (10000,)  # raw copy passes
    corrupted = bytearray(raw)
    corrupted[5000] ^= 0xFF
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.parent.mkdir()
    bad.write_bytes(gzip.compress(bytes(corrupted)))
    with pytest.raises(ChecksumError, match="decompressed contents"):
        read_idx(bad, MNIST_SHA256["t10k-labels-idx1-ubyte"])
    remote = idx_files(("https://unused.invalid/",), MNIST_SHA256)["t10k-labels-idx1-ubyte"]
    with pytest.raises(ChecksumError):
        fetch(bad.parent, remote, download_missing=False)
    with pytest.raises(ValueError, match="algorithm='crc32': allowed is one of"):
        data.file_digest(good, "crc32")
    # not checked (no sha256, or verify=False): a broken file still names itself
    truncated = tmp_path / "truncated-idx"
    truncated.write_bytes(raw[:6])
    with pytest.raises(ValueError, match=r"truncated-idx: IDX header of 1 dimensions needs 8 bytes, but the file"):
        read_idx(truncated)
    usps = tmp_path / "root" / "usps"
    usps.mkdir(parents=True)
    for name in ("zip.train.gz", "zip.test.gz"):
        (usps / name).write_bytes(gzip.compress(b"1 x 3"))
    with pytest.raises(ValueError, match=r"zip.train.gz: not a file of numbers .*allowed is the USPS file"):
        data.load_usps(tmp_path / "root", verify=False)  # numpy's own message named no file


def test_unchecked_idx_files_of_the_wrong_split_name_the_folder(tmp_path):
    """MNIST read with verify=False from a folder whose test labels are the training
    labels (60,000 for 10,000 images): ArrayDataset's "y of dataset 'mnist' ..." named no
    file. The folder and its IDX files are named, as MNIST-1D names its pickle."""
    folder = tmp_path / "mnist"
    shutil.copytree(require_data(SHARED_DATA / "mnist", "MNIST's IDX files"), folder)
    shutil.copy(folder / "train-labels-idx1-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(folder))}: its IDX files do not hold mnist's splits "
                       r"\(.*\); one is truncated, corrupt or of another set: verify=True names the file whose "
                       "digest differs$"):
        data.load_dataset("mnist", root=tmp_path, verify=False)


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_unreadable_gzip_files_are_named_with_what_to_do(tmp_path, damage):
    import run_experiment
    from analysis.config import ConfigError

    content = gzip.compress(np.arange(20000, dtype=np.int32).tobytes())
    content = content[: len(content) // 2] if damage == "truncated" else b"<html>Not Found</html>"
    for relative in ("mnist/train-images-idx3-ubyte.gz", "usps/zip.train.gz"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(content)
    # gzip's own EOFError / BadGzipFile named no file
    for name, relative in (("mnist", "mnist/train-images-idx3-ubyte.gz"), ("usps", "usps/zip.train.gz")):
        path = re.escape(str(tmp_path / relative))
        for verify in (True, False):  # checked by fetch()/read_idx() (hashing), or only read (read_bytes)
            with pytest.raises(ChecksumError, match=rf"^{path}: not a readable gzip file .*fetch it again$"):
                data.load_dataset(name, root=tmp_path, verify=verify)
        with pytest.raises(ChecksumError, match=rf"^{path}: not a readable gzip file"):
            data.file_digest(tmp_path / relative, decompress=True)
    # through the command line's loader: one ConfigError line (the EOFError escaped it)
    with pytest.raises(ConfigError, match=r"^data.dataset='usps': .*zip.train.gz: not a readable gzip file"):
        run_experiment.load_training_data({"dataset": "usps", "root": str(tmp_path), "download": False})


# ---------------------------------------------------------------- download (file:// URLs, real urllib)
def test_download_checks_the_digest_and_writes_atomically(tmp_path):
    source = tmp_path / "source" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(np.arange(5000, dtype=np.int32).tobytes())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "root" / "set" / "blob.bin"
    assert download(source.as_uri(), target, checksum=digest) == target
    assert target.read_bytes() == source.read_bytes()

    other = tmp_path / "root" / "set" / "other.bin"
    with pytest.raises(ChecksumError):
        download(source.as_uri(), other, checksum="0" * 64)
    assert not other.exists()
    assert sorted(p.name for p in other.parent.iterdir()) == ["blob.bin"]  # no partial files left

    with pytest.raises(DownloadError, match="missing.bin") as error:
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "root" / "set" / "x.bin")
    assert str(tmp_path / "root" / "set") in str(error.value)


def test_a_download_removes_the_stale_temporary_files_a_killed_one_left(tmp_path):
    """A download killed by a signal (a scheduler, `timeout`) skips its clean-up and left its .part file."""
    source = tmp_path / "blob.bin"
    source.write_bytes(b"z" * 100)
    folder = tmp_path / "root" / "set"
    folder.mkdir(parents=True)
    old = time.time() - STALE_PART_SECONDS - 60
    parts = {name: folder / name for name in (".blob.bin.k1ll3d00.part", ".blob.bin.runn1ng0.part",
                                              ".other.bin.k1ll3d00.part")}
    for path in parts.values():
        path.write_bytes(b"partial")
    for name in (".blob.bin.k1ll3d00.part", ".other.bin.k1ll3d00.part"):
        os.utime(parts[name], (old, old))
    download(source.as_uri(), folder / "blob.bin")
    # the stale one of this file goes; one written lately may be a download in progress; other files' stay
    assert sorted(p.name for p in folder.iterdir()) == [".blob.bin.runn1ng0.part", ".other.bin.k1ll3d00.part",
                                                        "blob.bin"]


def test_every_download_waits_download_timeout_seconds_on_a_silent_server(tmp_path, monkeypatch):
    """A server that accepts the connection and never answers is given up after DOWNLOAD_TIMEOUT per mirror:
    the timeout is the module's constant, which fetch() (every loader's download) uses."""
    import fl.data.download as download_module  # the module: fl.data re-exported the function in its name

    assert download_module.__name__ == "fl.data.download" and download_module.fetch is fetch
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel completes the handshake; nothing ever reads or answers
    port = silent.getsockname()[1]
    monkeypatch.setattr(download_module, "DOWNLOAD_TIMEOUT", 0.2)
    remote = RemoteFile("blob.bin", (f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b"))
    try:
        with pytest.raises(DownloadError, match=r"mirror 1: could not download .*/a \(timed out\).* "
                                                r"mirror 2: could not download .*/b \(timed out\)"):
            fetch(tmp_path / "set", remote, download_missing=True)
    finally:
        silent.close()
    assert list((tmp_path / "set").iterdir()) == []


@pytest.mark.parametrize("timeout", [0, -1, "5", float("inf"), True])
def test_a_download_timeout_that_is_no_positive_number_is_refused(tmp_path, timeout):
    """timeout=0 failed as "[Errno 115] Operation now in progress", -1 as urllib's bare
    "Timeout value out of range", "5" as a TypeError; nothing is fetched or written."""
    source = tmp_path / "blob.bin"
    source.write_bytes(b"z")
    with pytest.raises(ValueError, match=rf"^timeout={re.escape(repr(timeout))}: allowed is a finite number > 0$"):
        download(source.as_uri(), tmp_path / "set" / "blob.bin", timeout=timeout)
    assert not (tmp_path / "set").exists()
    assert download(source.as_uri(), tmp_path / "set" / "blob.bin", timeout=0.5).read_bytes() == b"z"


def test_fetch_tries_the_next_mirror_after_a_bad_file_and_names_what_each_did(tmp_path):
    contents = np.arange(3000, dtype=np.int32).tobytes()
    mirrors = {
        "html": b"<html><body>Moved: see our new site</body></html>",  # an error page served with status 200
        "other": gzip.compress(contents[:-1] + b"\xff"),  # another version: its digest differs
        "good": gzip.compress(contents),
        "missing": None,
    }
    for name, body in mirrors.items():
        (tmp_path / name).mkdir()
        if body is not None:
            (tmp_path / name / "blob.gz").write_bytes(body)
    url = {name: (tmp_path / name / "blob.gz").as_uri() for name in mirrors}

    def remote(*names):
        digest = hashlib.sha256(contents).hexdigest()
        return RemoteFile("blob.gz", tuple(url[n] for n in names), digest, decompressed=True)

    folder = tmp_path / "root" / "set"
    target = folder / "blob.gz"
    # a bad file stopped everything and the good mirror was never tried
    assert fetch(folder, remote("html", "other", "good"), download_missing=True) == target
    assert gzip.decompress(target.read_bytes()) == contents and [p.name for p in folder.iterdir()] == ["blob.gz"]
    target.unlink()
    # every mirror served a bad file: one ChecksumError naming the target and each URL with what it served
    with pytest.raises(ChecksumError) as error:
        fetch(folder, remote("html", "other"), download_missing=True)
    message = str(error.value)
    assert message.startswith(f"{target}: no mirror served it (mirror 1: {url['html']} served a file")
    assert "not a readable gzip file" in message and f"mirror 2: {url['other']} served" in message
    assert "sha256 of its decompressed contents is" in message and ".part" not in message
    assert f"not saved as {target}" in message and list(folder.iterdir()) == []
    # a mirror that cannot be reached makes it a DownloadError, still naming every mirror
    with pytest.raises(DownloadError, match=r"mirror 1: could not download .*missing.* mirror 2: .*other"):
        fetch(folder, remote("missing", "other"), download_missing=True)


@pytest.fixture
def broken_server():
    """Base URL of an HTTP server on 127.0.0.1 whose transfers break off: ``/short`` announces 100000 bytes
    and sends 1000, ``/chunked`` stops in the middle of a chunk (both as a dropped connection does)."""
    replies = {
        "/short": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000,
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n186a0\r\n" + b"x" * 1000,
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.wfile.write(replies[self.path])
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_transfer_that_breaks_off_is_a_download_error_and_the_next_mirror_is_tried(broken_server, tmp_path):
    """A body cut short of its Content-Length was saved under the real name (no checksum given); a chunked
    body cut off raised http.client.IncompleteRead, which fetch() let escape instead of trying the next mirror."""
    folder = tmp_path / "root" / "set"
    with pytest.raises(DownloadError, match=r"/short \(the connection ended after 1000 of the 100000 bytes "
                                            r"announced\); .*place it as blob.bin in "):
        download(f"{broken_server}/short", folder / "blob.bin")
    with pytest.raises(DownloadError, match=r"could not download .*/chunked \(IncompleteRead"):
        download(f"{broken_server}/chunked", folder / "blob.bin")
    assert list(folder.iterdir()) == []  # nothing saved, no partial files left
    good = tmp_path / "good.bin"
    good.write_bytes(b"y" * 10)
    for broken in ("short", "chunked"):
        remote = RemoteFile("blob.bin", (f"{broken_server}/{broken}", good.as_uri()))
        assert fetch(folder, remote, download_missing=True).read_bytes() == b"y" * 10
        (folder / "blob.bin").unlink()
    with pytest.raises(DownloadError, match=r"mirror 1: could not download .*/short .* mirror 2: .*/chunked"):
        fetch(folder, RemoteFile("blob.bin", (f"{broken_server}/short", f"{broken_server}/chunked")),
              download_missing=True)


def test_mnist_loader_downloads_into_an_empty_root(shared_root, tmp_path):
    mirror = need(shared_root, "mnist").as_uri() + "/"
    files = idx_files(("file:///nonexistent-mirror/", mirror), MNIST_SHA256)  # first mirror fails
    train, test = load_idx_dataset("mnist", "mnist", files, root=tmp_path, download=True)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(f"{s}.gz" for s in MNIST_SHA256)
    assert (len(train), len(test)) == (60000, 10000)


# ---------------------------------------------------------------- image datasets
@pytest.fixture(scope="session")
def mnist(shared_root):
    need(shared_root, "mnist")
    return data.load_dataset("mnist", root=shared_root)


def raw_stats(path: Path) -> tuple[float, float]:
    """Mean and std of the 8-bit pixels scaled to [0, 1], from their histogram."""
    counts = np.bincount(read_idx(path).ravel(), minlength=256)
    values = np.arange(256) / 255.0
    mean = counts @ values / counts.sum()
    return mean, np.sqrt(counts @ (values - mean) ** 2 / counts.sum())


def test_mnist(mnist, shared_root):
    train, test = mnist
    assert (len(train), len(test)) == (60000, 10000)
    assert train.feature_shape == (1, 28, 28) and train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert set(train.y.unique().tolist()) == set(range(10)) and train.num_classes == 10
    mean, std = raw_stats(shared_root / "mnist" / "train-images-idx3-ubyte.gz")
    assert (round(mean, 4), round(std, 4)) == (0.1307, 0.3081)
    assert abs(train.x.mean().item()) < 1e-4 and abs(train.x.std().item() - 1) < 1e-4
    assert abs(test.x.mean().item()) < 0.02


def test_fashion_mnist(shared_root):
    need(shared_root, "fashion-mnist")
    train, test = data.load_dataset("fashion_mnist", root=shared_root)
    assert (len(train), len(test)) == (60000, 10000) and test.feature_shape == (1, 28, 28)
    assert torch.equal(torch.bincount(train.y), torch.full((10,), 6000))
    mean, std = raw_stats(shared_root / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    assert (round(mean, 3), round(std, 3)) == (0.286, 0.353)
    assert abs(train.x.mean().item()) < 1e-4 and abs(train.x.std().item() - 1) < 1e-4


def test_usps(shared_root):
    need(shared_root, "usps")
    train, test = data.load_dataset("usps", root=shared_root)
    assert (len(train), len(test)) == (7291, 2007) and train.feature_shape == (1, 16, 16)
    # class counts of the dataset's info file (zip.info.txt)
    assert torch.bincount(train.y).tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    assert torch.bincount(test.y).tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
    assert abs(train.x.mean().item()) < 1e-4 and abs(train.x.std().item() - 1) < 1e-4


def test_mnist1d(shared_root):
    need(shared_root, "mnist1d")
    train, test = data.load_dataset("mnist1d", root=shared_root)
    assert (len(train), len(test)) == (4000, 1000) and train.feature_shape == (1, 40)
    assert train.y.min().item() == 0 and train.y.max().item() == 9
    assert abs(train.x.mean().item()) < 1e-4 and abs(train.x.std().item() - 1) < 1e-4


def test_an_unverified_damaged_mnist1d_pickle_is_named(shared_root, tmp_path):
    """With verify=False a truncated pickle gave a raw UnpicklingError naming no file."""
    original = need(shared_root, "mnist1d") / "mnist1d_data.pkl"
    (tmp_path / "mnist1d").mkdir()
    damaged = tmp_path / "mnist1d" / "mnist1d_data.pkl"
    damaged.write_bytes(original.read_bytes()[:5000])
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(damaged))}: not the MNIST-1D pickle \("):
        data.load_dataset("mnist1d", root=tmp_path, verify=False)
    damaged.write_bytes(pickle.dumps([1, 2]))  # a pickle, but not the dataset's dict
    with pytest.raises(ChecksumError, match=r"not the MNIST-1D pickle \(TypeError"):
        data.load_dataset("mnist1d", root=tmp_path, verify=False)


def test_pickles_naming_other_globals_are_refused():
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_data_pickle(pickle.dumps(Payload()))
    assert load_data_pickle(pickle.dumps({"x": np.arange(3)}))["x"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------- CIFAR-10
@pytest.fixture(scope="session")
def cifar_cache(request, tmp_path_factory):
    """Decoded CIFAR arrays survive between runs in pytest's cache folder when it is on."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("fedecon-cifar10")) if cache is not None else tmp_path_factory.mktemp("cifar-cache")


@pytest.fixture(scope="session")
def cifar(shared_root, cifar_cache):
    need(shared_root, "cifar10/cifar10-jpg.tar.gz")
    return load_cifar10(shared_root, cache=cifar_cache)  # the first run decodes 60k JPEGs (~10 s)


def test_cifar10_from_the_jpeg_tarball(cifar, shared_root, cifar_cache):
    train, test = cifar
    assert (len(train), len(test)) == (50000, 10000) and train.feature_shape == (3, 32, 32)
    assert torch.bincount(train.y).tolist() == [5000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10
    channel_std, channel_mean = torch.std_mean(train.x, dim=(0, 2, 3))
    assert torch.allclose(channel_mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(channel_std, torch.ones(3), atol=1e-3)
    # the decoded arrays are cached; a second load gives the same tensors
    assert (cifar_cache / "cifar10-jpg.tar.gz.decoded.npz").is_file()
    again, _ = load_cifar10(shared_root, cache=cifar_cache)
    assert torch.equal(again.x[:100], train.x[:100]) and torch.equal(again.y, train.y)


def test_cifar10_image_folder_and_tarball_readers_agree(shared_root, tmp_path):
    tarball = need(shared_root, "cifar10/cifar10-jpg.tar.gz")
    # extract the first three files per class and split into <root>/cifar10/cifar10-jpg/
    root = tmp_path / "root"
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(tarball) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[-2] in CIFAR10_CLASSES:
                key = (parts[1], parts[2])
                if taken.get(key, 0) < 3:
                    taken[key] = taken.get(key, 0) + 1
                    archive.extract(member, root / "cifar10", filter="data")
            if len(taken) == 20 and all(v == 3 for v in taken.values()):
                break
    folder = root / "cifar10" / "cifar10-jpg"
    small = tmp_path / "small.tar"
    with tarfile.open(small, "w") as archive:
        archive.add(folder, arcname="cifar10-jpg")
    from_folder, from_tar = read_image_tree(folder, limit_per_class=3), read_image_tree(small, limit_per_class=3)
    for split in ("train", "test"):
        x, y = from_folder[split]
        assert x.shape == (30, 3, 32, 32) and x.dtype == np.uint8
        assert y.tolist() == [c for c in range(10) for _ in range(3)]
        assert np.array_equal(x, from_tar[split][0]) and np.array_equal(y, from_tar[split][1])
    assert read_image_tree(small, limit_per_class=1)["test"][0].shape == (10, 3, 32, 32)
    # the loader finds the extracted folder and standardises per channel
    train, test = load_cifar10(root, limit_per_class=3)
    assert (len(train), len(test)) == (30, 30) and train.feature_shape == (3, 32, 32)
    assert torch.allclose(train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_an_incomplete_cifar10_image_folder_is_refused_and_not_cached(tmp_path):
    """A class folder renamed (train/plane) or missing (test/cat) was skipped without a word, and the
    smaller dataset cached: read whole, a tree must hold 5,000 train and 1,000 test images a class."""
    write_cifar_jpeg_tarball(tmp_path / "images.tar.gz", per_class=1)
    with tarfile.open(tmp_path / "images.tar.gz") as archive:
        archive.extractall(tmp_path / "cifar10", filter="data")
    folder = tmp_path / "cifar10" / "cifar10-jpg"
    (folder / "train" / "airplane").rename(folder / "train" / "plane")
    shutil.rmtree(folder / "test" / "cat")
    counts = [f"train/{c} holds {0 if c == 'airplane' else 1}" for c in CIFAR10_CLASSES]
    counts += [f"test/{c} holds {0 if c == 'cat' else 1}" for c in CIFAR10_CLASSES]
    expected = (rf"^{re.escape(str(folder))}: {', '.join(counts)} images; CIFAR-10 has 5000 of each class in "
                r"train/<class>/ and 1000 in test/<class>/, classes airplane, automobile, .* \(limit_per_class")
    with pytest.raises(ChecksumError, match=expected):
        read_image_tree(folder)
    with pytest.raises(ChecksumError, match=expected):
        load_cifar10(tmp_path, source="jpeg", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing cached
    train, test = load_cifar10(tmp_path, limit_per_class=1)  # a subset asked for is not checked
    assert torch.bincount(train.y, minlength=10).tolist() == [0] + [1] * 9
    assert torch.bincount(test.y, minlength=10).tolist() == [1, 1, 1, 0] + [1] * 6


def test_a_damaged_cifar10_image_is_named(tmp_path):
    """A truncated JPEG gave a raw OSError ('Truncated File Read', 'cannot identify image file
    <_io.BytesIO ...>') and an image of another size a ValueError, neither naming the file."""
    from PIL import Image

    tarball = tmp_path / "cifar10-jpg.tar.gz"
    write_cifar_jpeg_tarball(tarball, per_class=1)
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path, filter="data")
    image = tmp_path / "cifar10-jpg" / "test" / "bird" / "0000.jpg"
    complete = image.read_bytes()
    for damaged in (complete[:300], b""):  # cut short; empty
        image.write_bytes(damaged)
        with pytest.raises(ChecksumError, match=rf"^{re.escape(str(image))}: not a readable image \(\w+Error: "):
            read_image_tree(tmp_path / "cifar10-jpg", limit_per_class=1)
    Image.new("RGB", (16, 32)).save(image, "JPEG")
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(image))}: an image of 16x32 pixels; CIFAR-10 images "
                                            r"are 32x32; the file is truncated"):
        read_image_tree(tmp_path / "cifar10-jpg", limit_per_class=1)
    # the same file cut short inside a well-formed tarball: the tarball and the member are named
    image.write_bytes(complete[:300])
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(damaged, "w") as archive:
        archive.add(tmp_path / "cifar10-jpg", arcname="cifar10-jpg")
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(damaged))}: its member cifar10-jpg/test/bird/0000.jpg "
                                            r"is not a readable image"):
        read_image_tree(damaged, limit_per_class=1)


def write_cifar_python_archive(path: Path, per_batch: int, seed: int = 0) -> dict:
    """An archive in the official format: Python-2-style pickles of dicts with byte keys."""
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as archive:
        for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
            batch = {
                b"batch_label": f"{name} of 6".encode(),
                b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
            }
            batches[name] = batch
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        meta = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        archive.addfile(info, io.BytesIO(meta))
    return batches


def test_cifar10_official_python_archive_format(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    archive = folder / "cifar-10-python.tar.gz"
    batches = write_cifar_python_archive(archive, per_batch=7)
    splits = read_python_archive(archive)
    x, y = splits["train"]
    assert x.shape == (35, 3, 32, 32) and x.dtype == np.uint8 and splits["test"][0].shape == (7, 3, 32, 32)
    first = batches["data_batch_1"][b"data"][0]
    assert np.array_equal(x[0, 0].ravel(), first[:1024])  # red plane first, row-major
    assert np.array_equal(x[0, 2].ravel(), first[2048:])
    assert y[7:14].tolist() == batches["data_batch_2"][b"labels"]
    # the same batches, extracted
    with tarfile.open(archive) as opened:
        opened.extractall(tmp_path / "extracted", filter="data")
    extracted = read_python_folder(tmp_path / "extracted" / "cifar-10-batches-py")
    assert np.array_equal(extracted["train"][0], x) and np.array_equal(extracted["test"][1], splits["test"][1])
    # through the loader: not the official archive, so its md5 fails unless verify=False
    with pytest.raises(ChecksumError, match="md5"):
        load_cifar10(tmp_path, source="python", cache=tmp_path / "cache")
    train, test = load_cifar10(tmp_path, source="python", verify=False, cache=tmp_path / "cache")
    assert train.feature_shape == (3, 32, 32) and (len(train), len(test)) == (35, 7)
    assert torch.allclose(train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    # the cache built without the checksum does not stand in for it
    with pytest.raises(ChecksumError, match="md5"):
        load_cifar10(tmp_path, source="python", cache=tmp_path / "cache")
    # nor does a cache of an earlier archive: a new one is decoded
    write_cifar_python_archive(archive, per_batch=4, seed=1)
    train, test = load_cifar10(tmp_path, source="python", verify=False, cache=tmp_path / "cache")
    assert (len(train), len(test)) == (20, 4)
    with pytest.raises(ValueError, match="source='png': allowed is one of"):
        load_cifar10(tmp_path, source="png")


def test_the_cache_of_an_extracted_cifar10_folder_follows_its_files(tmp_path):
    archive = tmp_path / "official.tar.gz"
    write_cifar_python_archive(archive, per_batch=4)
    with tarfile.open(archive) as opened:
        opened.extractall(tmp_path / "cifar10", filter="data")
    train, test = load_cifar10(tmp_path, source="python", cache=tmp_path / "cache")
    assert (len(train), len(test)) == (20, 4) and (tmp_path / "cache" / "cifar-10-batches-py.decoded.npz").is_file()
    # a batch file replaced in the folder is seen, not hidden by the cache
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    train, test = load_cifar10(tmp_path, source="python", cache=tmp_path / "cache")
    assert (len(train), len(test)) == (20, 3)


def test_a_damaged_cifar10_python_batch_is_named(tmp_path):
    """An extracted folder is never verified (nor a tarball with verify=False): a batch cut short gave a raw
    UnpicklingError naming no file, and a folder missing batches was not named."""
    archive = tmp_path / "official.tar.gz"
    write_cifar_python_archive(archive, per_batch=4)
    with tarfile.open(archive) as opened:
        opened.extractall(tmp_path / "cifar10", filter="data")
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(batch))}: not a CIFAR-10 python batch "
                                            r"\(UnpicklingError: .*delete it and fetch it again$"):
        load_cifar10(tmp_path, source="python", cache=tmp_path / "cache")
    batch.write_bytes(pickle.dumps([1, 2], protocol=2))  # a pickle, but not a batch's dict
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(batch))}: not a CIFAR-10 python batch \(TypeError"):
        read_python_folder(folder)
    batch.unlink()
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(folder))}: CIFAR-10 python batches missing: "
                                            r"\['data_batch_3'\]"):
        read_python_folder(folder)
    # the same batch damaged inside a well-formed tarball, read with verify=False
    damaged = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    with tarfile.open(damaged, "w:gz") as out:
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
            payload = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            payload = payload[:40] if name == "test_batch" else payload
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload))
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(damaged))}: its member cifar-10-batches-py/test_batch "
                                            r"is not a CIFAR-10 python batch \((UnpicklingError|EOFError)"):
        load_cifar10(tmp_path, source="python", verify=False, cache=tmp_path / "cache")


def write_cifar_jpeg_tarball(path: Path, per_class: int) -> None:
    """A tarball laid out as the project's copy, cifar10-jpg/{train,test}/<class>/NNNN.jpg, of random images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            for name in CIFAR10_CLASSES:
                for i in range(per_class):
                    image = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image, "JPEG")
                    info = tarfile.TarInfo(f"cifar10-jpg/{split}/{name}/{i:04d}.jpg")
                    info.size = image.tell()
                    archive.addfile(info, io.BytesIO(image.getvalue()))


def test_cifar10_limit_per_class_verifies_the_tarball_and_a_damaged_one_is_named(tmp_path):
    tarball = tmp_path / "cifar10" / "cifar10-jpg.tar.gz"
    tarball.parent.mkdir()
    write_cifar_jpeg_tarball(tarball, per_class=2)
    # not the project's tarball: the limit skipped the checksum
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(tarball))}: sha256 of its bytes is"):
        load_cifar10(tmp_path, limit_per_class=1)
    train, test = load_cifar10(tmp_path, limit_per_class=1, verify=False)
    assert (len(train), len(test)) == (10, 10)
    # cut in half: the test images are past the cut (it was a raw EOFError naming no file)
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    for options in ({"limit_per_class": 1}, {}):
        with pytest.raises(ChecksumError, match=rf"^{re.escape(str(tarball))}: not a readable tarball"):
            load_cifar10(tmp_path, verify=False, cache=tmp_path / "cache", **options)
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_python_archive(archive, per_batch=3)
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(archive))}: not a readable tarball"):
        read_python_archive(archive)


def test_a_cifar10_cache_write_killed_meanwhile_leaves_no_file_for_good(tmp_path):
    """A process killed while it wrote the decoded cache (a --jobs worker the out-of-memory
    killer stopped) left its .part file, up to 185 MB, forever: the next load that writes
    the cache removes those older than STALE_PART_SECONDS, as a download does."""
    (tmp_path / "cifar10").mkdir()
    write_cifar_python_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", per_batch=4)
    cache = tmp_path / "cache"
    cache.mkdir()
    killed, writing = (cache / f".cifar-10-python.tar.gz.decoded.npz.{pid}.part" for pid in (9832, 9833))
    for part in (killed, writing):
        part.write_bytes(b"partial")
    old = time.time() - STALE_PART_SECONDS - 60
    os.utime(killed, (old, old))
    load_cifar10(tmp_path, verify=False, cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == [writing.name, "cifar-10-python.tar.gz.decoded.npz"]


def test_a_read_only_data_folder_keeps_its_cache_elsewhere_even_for_root(tmp_path):
    """os.access says yes to root for any folder: a shared copy made read-only (mode 555)
    got a 185 MB decoded CIFAR-10 cache written into it. Its mode now counts too."""
    from fl.data.download import cache_dir

    folder = tmp_path / "cifar10"
    folder.mkdir()
    assert cache_dir(folder) == folder
    folder.chmod(0o555)
    try:
        assert cache_dir(folder) == Path.home() / ".cache" / "fedecon" / "cache" / "cifar10"
    finally:
        folder.chmod(0o755)


def test_cifar10_damaged_cache_is_rebuilt_and_a_failed_write_leaves_no_partial_file(tmp_path):
    (tmp_path / "cifar10").mkdir()
    write_cifar_python_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", per_batch=5)
    cache = tmp_path / "cache"
    first, _ = load_cifar10(tmp_path, verify=False, cache=cache)
    cache_file = cache / "cifar-10-python.tar.gz.decoded.npz"
    cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])  # was a raw BadZipFile
    again, _ = load_cifar10(tmp_path, verify=False, cache=cache)
    assert torch.equal(again.x, first.x)
    with np.load(cache_file) as stored:  # rebuilt whole
        assert stored["train_x"].shape == (25, 3, 32, 32)
    # the cache's name is taken by a folder: the rename fails, and the partial file goes too
    cache_file.unlink()
    cache_file.mkdir()
    with pytest.raises(IsADirectoryError):
        load_cifar10(tmp_path, verify=False, cache=cache)
    assert [p.name for p in cache.iterdir()] == [cache_file.name]


# ---------------------------------------------------------------- Shakespeare
PLAY = """THE TRAGEDY OF TESTING

PERSONS REPRESENTED.

FIRST CLERK, a clerk.
Adieu.


ACT I.

SCENE I. A room.

[Enter FIRST CLERK and MRS. PAGE.]

FIRST CLERK.
Good morrow, mistress; [Aside.] she is late.
What news?

MRS. PAGE.
None, sir.

[Exit FIRST CLERK, with papers
and a lamp.]

Adieu.

ALL. Amen.

SONG.
Lyrics no role speaks.
"""


def test_parse_play_finds_speakers_and_drops_directions():
    assert parse_play(PLAY) == [
        ("FIRST CLERK", "Good morrow, mistress; she is late. What news?"),
        ("MRS. PAGE", "None, sir. Adieu."),
        ("ALL", "Amen."),
    ]


PROLOGUED = """CLERK AND CRESSIDA

by Nobody

PROLOGUE

CLERK AND CRESSIDA

In Troy, there lies the scene.
From isles of Greece.

ACT I.

SCENE I. A room.

CRESSIDA.
Good morrow.

EPILOGUE

ROSALIND.
It is not the fashion.

EPILOGUE.

[Spoken by PROSPERO]

Now my charms are all o'erthrown.
"""


def test_prologue_and_epilogue_are_roles_and_the_plays_title_is_no_speaker():
    """The title under Troilus and Cressida's PROLOGUE was taken for a speaker (a client named after the play),
    and the text of a PROLOGUE/EPILOGUE heading that no speaker heading follows was dropped."""
    assert parse_play(PROLOGUED) == [
        ("PROLOGUE", "In Troy, there lies the scene. From isles of Greece."),
        ("CRESSIDA", "Good morrow."),  # the title's end with a heading's period: a role named in the title
        ("ROSALIND", "It is not the fashion."),
        ("EPILOGUE", "Now my charms are all o'erthrown."),
    ]


def test_shakespeare_roles_are_clients(shared_root):
    folder = need(shared_root, "shakespeare")
    roles = read_roles(folder)
    lengths = np.array([len(role.text) for role in roles])
    assert len(roles) > 1000 and (lengths > 1000).sum() > 500  # heavy-tailed natural partition
    keys = {role.key for role in roles}
    assert {"hamlet/HAM", "macbeth/LADY MACBETH", "macbeth/MACBETH", "henry_v/CHORUS"} <= keys
    assert "troilus_and_cressida/PROLOGUE" in keys and "troilus_and_cressida/TROILUS AND CRESSIDA" not in keys

    clients = load_shakespeare_clients(shared_root, max_samples_per_client=1000)
    assert clients.num_clients > 100 and len(clients.roles) == len(clients.train_indices) == len(clients.test_indices)
    train, test = clients.train, clients.test
    assert train.x.dtype == torch.int64 and train.feature_shape == (SEQUENCE_LENGTH,)
    assert train.num_classes == len(VOCABULARY) == 96
    assert np.array_equal(np.concatenate(clients.train_indices), np.arange(len(train)))  # a partition
    assert np.array_equal(np.concatenate(clients.test_indices), np.arange(len(test)))
    sizes = np.array([len(i) for i in clients.train_indices])
    assert sizes.max() == 900 and sizes.min() < 900  # 90% of at most 1000 windows per role
    # windows of one role are consecutive: each input is the previous one shifted by its target
    k = clients.roles.index("hamlet/HAM")
    x, y = train.x[clients.train_indices[k]], train.y[clients.train_indices[k]]
    assert torch.equal(x[1:, :-1], x[:-1, 1:]) and torch.equal(x[1:, -1], y[:-1])
    role_text = next(role.text for role in roles if role.key == "hamlet/HAM")
    assert decode(x[0]) + decode(y[:3]) == role_text[:83]
    # test windows start after the gap: no test input contains a training target
    first_test = test.x[clients.test_indices[k][0]]
    assert decode(first_test) == role_text[80 + 900 : 80 + 900 + 80]

    few = load_shakespeare_clients(shared_root, max_clients=5, max_samples_per_client=1000, seed=1)
    assert few.num_clients == 5 and set(few.roles) <= set(clients.roles)
    with pytest.raises(ValueError, match="test_fraction=1.5: allowed is"):
        load_shakespeare_clients(shared_root, test_fraction=1.5)
    with pytest.raises(ValueError, match="max_clients=2.5: allowed is None or an integer >= 1"):
        load_shakespeare_clients(shared_root, max_clients=2.5)
    # both were taken: download='no' as True, and a seed that no draw reads without max_clients
    with pytest.raises(ValueError, match=r"^download='no': allowed is True or False$"):
        load_shakespeare_clients(shared_root, download="no")
    with pytest.raises(ValueError, match=r"^seed='x': allowed is an integer >= 0"):
        load_shakespeare_clients(shared_root, seed="x")
    # 500 windows leave 50 for the test split, fewer than the 80-character gap and one window
    with pytest.raises(ValueError, match="no role .* max_samples_per_client=500.* = 1 and .* = 810 windows"):
        load_shakespeare_clients(shared_root, max_samples_per_client=500)


@pytest.mark.parametrize("per_channel, channel", [(False, ""), (True, "channel 1 of ")])
def test_constant_training_inputs_are_named_not_standardised_into_nans(per_channel, channel):
    x = np.stack([np.full((2, 2), 3, np.uint8), np.zeros((2, 2), np.uint8)])[None].repeat(4, axis=0)  # (4, 2, 2, 2)
    if not per_channel:
        x[:] = 7
    else:
        x[0, 0] = 9  # channel 0 varies, channel 1 is constant
    labels = np.arange(4)
    with pytest.raises(ValueError, match=f"blank: {channel}the training inputs are constant"):
        standardised_pair("blank", x, labels, x, labels, 10, per_channel=per_channel)
    varied = np.arange(32, dtype=np.float32).reshape(4, 2, 2, 2)
    varied[0, 1, 0, 0] = np.nan  # varies, but holds a NaN: not "constant"
    with pytest.raises(ValueError, match="blank: the training inputs hold NaN or infinite values"):
        standardised_pair("blank", varied, labels, varied, labels, 10, per_channel=per_channel)
