"""Where dataset files live, how they are checked, and how they are fetched.

Every loader keeps its files under a *data root* (``root`` argument, else the
``FEDECON_DATA`` environment variable, else ``~/.cache/fedecon``), one folder per
dataset (``<root>/mnist``, ``<root>/cifar10``, ...). A file is looked up there first;
only when it is missing and the caller passed ``download=True`` is it fetched, with
``urllib``, into a temporary file that is checked and then renamed into place, so an
interrupted download never leaves a half-written file under the real name (the temporary
file of a killed one is removed by the next download of that file, once it is older than
``STALE_PART_SECONDS``). Mirrors are tried in order until one serves a file that passes
the check; a mirror is given up after ``DOWNLOAD_TIMEOUT`` seconds without an answer.

Checksums are hex digests (``sha256`` or ``md5``). ``decompress=True`` hashes the
contents of a gzip file rather than its bytes, so an official archive and a
re-compressed copy of the same data both pass.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from fl.checks import check_bool, check_positive

DATA_ROOT_ENV = "FEDECON_DATA"
CHECKSUM_ALGORITHMS = ("sha256", "md5")
URL_SCHEMES = ("https", "http", "file")
# Seconds a download waits on each socket operation (connecting, each read) before it gives the
# mirror up: a bound on a silent server, not on the whole transfer, which may take longer.
DOWNLOAD_TIMEOUT = 60.0
# Seconds after its last write past which a download's temporary file counts as left by a process that
# was killed: a download in progress writes to it every MiB it receives (faster than 300 bytes/s, it is
# younger than this).
STALE_PART_SECONDS = 3600.0


class ChecksumError(ValueError):
    """A file is damaged (corrupt, truncated, not the format) or another version: its digest
    differs from the published one, or it cannot be decompressed."""


class DownloadError(OSError):
    """A download failed (no network, host unreachable, HTTP error, a transfer cut short)."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing and no download was asked for (or none exists)."""


def as_path(key: str, value) -> Path:
    """``value`` (a str or os.PathLike) as a Path, ``~`` expanded; ValueError naming
    ``key`` for anything else (a number, a bool, bytes)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{key}={value!r}: allowed is a folder path, a str or os.PathLike")
    return Path(value).expanduser()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FEDECON_DATA``, else ``~/.cache/fedecon``;
    :class:`DatasetNotFoundError` where it, or a folder above it, is a file (the loaders
    said "not found", or "no plays", or gave a bare NotADirectoryError)."""
    if root is not None:
        path = as_path("root", root)
    else:
        from_env = os.environ.get(DATA_ROOT_ENV)
        path = Path(from_env).expanduser() if from_env else Path.home() / ".cache" / "fedecon"
    _check_no_file_in_the_way(path, f"the data root {path} holding each dataset's folder", " or give another "
                              "data root")
    return path


def _check_no_file_in_the_way(folder: Path, holding: str, advice: str = "") -> None:
    """:class:`DatasetNotFoundError` at the first of ``folder`` and the folders above it
    that is there but is no folder: a file, or a symbolic link to nothing or to itself
    (mkdir raised a bare FileExistsError or NotADirectoryError), naming what the folder
    should hold (``holding``) and, after "move it away", any other ``advice``."""
    blocking = next((p for p in (folder, *folder.parents)
                     if (p.is_symlink() or p.exists()) and not p.is_dir()), None)
    if blocking is not None:
        kind = "a symbolic link to no folder" if blocking.is_symlink() and not blocking.exists() else "a file"
        raise DatasetNotFoundError(f"{blocking} is {kind}: allowed is a folder there, {holding}; move it "
                                   f"away{advice}")


def cache_dir(folder: Path, cache: str | os.PathLike | None = None) -> Path:
    """Where derived files (decoded arrays) of ``folder`` go.

    ``cache`` if given; else ``folder`` itself when it is writable and its mode grants
    writing to someone (root may write anywhere: a shared copy made read-only, mode 555,
    is still left alone); else ``~/.cache/fedecon/cache/<folder name>`` (for read-only
    shared copies).
    """
    if cache is not None:
        return as_path("cache", cache)
    if folder.is_dir() and os.access(folder, os.W_OK) and folder.stat().st_mode & 0o222:
        return folder
    return Path.home() / ".cache" / "fedecon" / "cache" / folder.name


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: allowed is one of {CHECKSUM_ALGORITHMS}")


# What gzip raises on reading a truncated or damaged gzip file, or one that is no gzip file at all.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def damaged_file(path: str | os.PathLike, problem: str) -> ChecksumError:
    """The error for the file ``path`` that ``problem`` (e.g. a digest that differs) shows damaged."""
    return ChecksumError(
        f"{path}: {problem}; the file is truncated, corrupt or a different version: delete it and fetch it again"
    )


def unreadable_gzip(path: str | os.PathLike, error: Exception) -> ChecksumError:
    """The error for ``path``, a gzip file that reading raised ``error`` (one of :data:`GZIP_ERRORS`) on."""
    return damaged_file(path, f"not a readable gzip file ({error})")


def _digest(path: str | os.PathLike, algorithm: str, decompress: bool) -> str:
    """:func:`file_digest`, with gzip's own errors (:data:`GZIP_ERRORS`) let through."""
    _check_algorithm(algorithm)
    digest = hashlib.new(algorithm)
    opener = gzip.open if decompress else open
    with opener(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", *, decompress: bool = False) -> str:
    """Hex digest of a file's bytes, or of its gzip-decompressed contents (then
    :class:`ChecksumError` naming ``path`` when it is not a readable gzip file)."""
    try:
        return _digest(path, algorithm, decompress)
    except GZIP_ERRORS as error:
        raise unreadable_gzip(path, error) from None


def _checksum_problem(path: str | os.PathLike, expected: str, algorithm: str, decompress: bool) -> str | None:
    """Why ``path`` fails the check against ``expected`` (None: it passes), in words that do not name it."""
    try:
        actual = _digest(path, algorithm, decompress)
    except GZIP_ERRORS as error:
        return f"not a readable gzip file ({error})"
    if actual == expected.lower():
        return None
    what = "decompressed contents" if decompress else "bytes"
    return f"{algorithm} of its {what} is {actual}, expected {expected.lower()}"


def verify_checksum(
    path: str | os.PathLike, expected: str, algorithm: str = "sha256", *, decompress: bool = False
) -> None:
    """Raise :class:`ChecksumError` naming ``path`` unless the digest of ``path`` equals
    ``expected`` (with ``decompress``, also when it is not a readable gzip file)."""
    problem = _checksum_problem(path, expected, algorithm, decompress)
    if problem is not None:
        raise damaged_file(path, problem)


def download(
    url: str,
    destination: str | os.PathLike,
    *,
    checksum: str | None = None,
    algorithm: str = "sha256",
    decompress: bool = False,
    timeout: float | None = None,
) -> Path:
    """Fetch ``url`` to ``destination`` atomically, checking ``checksum`` if given.

    The bytes go to a temporary file next to ``destination``; it is verified and then
    renamed, so ``destination`` either does not exist or holds the checked file. The
    temporary files of ``destination`` older than :data:`STALE_PART_SECONDS`, left by a
    download that was killed, are removed first. ``timeout``: seconds to wait on each
    socket operation, a finite number > 0 (None: :data:`DOWNLOAD_TIMEOUT`). ``url``
    is an ``https://``, ``http://`` or ``file://`` URL (ValueError naming it otherwise).
    Raises :class:`DownloadError` when the URL cannot be read or the transfer breaks off
    (a dropped connection, or fewer bytes than the announced ``Content-Length``), naming
    the URL and the folder to place the file in by hand, and :class:`ChecksumError`
    naming the URL and ``destination`` when what it served fails the check (a bad
    digest, or with ``decompress`` no readable gzip file: e.g. an HTML error page).
    """
    _check_algorithm(algorithm)
    if timeout is not None:
        check_positive("timeout", timeout)  # 0 read as "in progress", -1 a bare ValueError, "5" a TypeError
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in URL_SCHEMES:
        raise ValueError(f"url={url!r}: allowed is an https://, http:// or file:// URL (a local file is "
                         "file:///absolute/path)")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    prefix, suffix = f".{destination.name}.", ".part"
    remove_stale_parts(destination.parent, prefix, suffix)
    handle, partial = tempfile.mkstemp(dir=destination.parent, prefix=prefix, suffix=suffix)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "fedecon-dataset-loader"})
        hint = f"without a network, fetch it elsewhere and place it as {destination.name} in {destination.parent}"
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                announced = response.headers.get("Content-Length", "").strip()
                shutil.copyfileobj(response, out, 1 << 20)
                written = out.tell()
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(f"could not download {url} ({reason}); {hint}") from error
        if announced.isdigit() and int(announced) != written:
            raise DownloadError(
                f"could not download {url} (the connection ended after {written} of the {announced} bytes "
                f"announced); {hint}"
            )
        problem = None if checksum is None else _checksum_problem(partial, checksum, algorithm, decompress)
        if problem is not None:
            raise ChecksumError(
                f"{url} served a file that fails its check ({problem}): a damaged copy, another version or "
                f"an error page; it was not saved as {destination}"
            )
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return destination


def remove_stale_parts(folder: Path, prefix: str, suffix: str) -> None:
    """Remove the files ``prefix*suffix`` in ``folder`` (the temporary files of a download,
    or of a cache being written) last written more than :data:`STALE_PART_SECONDS` ago,
    left by a process that was killed; younger ones may be in progress."""
    now = time.time()
    for path in folder.glob(f"{glob.escape(prefix)}*{suffix}"):
        try:
            if now - path.stat().st_mtime > STALE_PART_SECONDS:
                path.unlink()
        except OSError:  # removed meanwhile by another process, or another user's in a shared (sticky) folder
            pass


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name, where to fetch it and how to check it.

    ``urls`` are mirrors tried in order (empty: no public download; the file must be
    placed by hand). ``checksum`` is a hex digest of the file's bytes, or of its
    decompressed contents when ``decompressed`` is true (then a raw, uncompressed
    copy named without ``.gz`` is accepted too and hashed as is).
    """

    filename: str
    urls: tuple[str, ...] = ()
    checksum: str | None = None
    algorithm: str = "sha256"
    decompressed: bool = False

    def candidates(self) -> tuple[str, ...]:
        """File names accepted on disk, preferred first."""
        if self.decompressed and self.filename.endswith(".gz"):
            return (self.filename, self.filename[: -len(".gz")])
        return (self.filename,)


def fetch(folder: str | os.PathLike, remote: RemoteFile, *, download_missing: bool, verify: bool = True) -> Path:
    """Path of ``remote`` inside ``folder``, downloading it if missing and allowed.

    An existing file is verified against ``remote.checksum`` when ``verify``; a
    downloaded one always is. Raises :class:`DatasetNotFoundError` naming the path and
    the ``download=True`` option when the file is missing, and naming the path where
    ``folder`` is a file or the file's name a folder. The mirrors are tried in
    order until one serves a file that passes the check; when none does, one error lists
    what each did: a :class:`ChecksumError` when every mirror served a file that failed
    the check, else a :class:`DownloadError`. ValueError unless ``download_missing`` (the
    loaders' ``download``) and ``verify`` are True or False.
    """
    check_bool("download", download_missing)
    check_bool("verify", verify)
    folder = Path(folder)
    _check_no_file_in_the_way(folder, f"{folder} holding {remote.filename}")
    for name in remote.candidates():
        path = folder / name
        if path.is_dir():  # was "not found"
            raise DatasetNotFoundError(f"{path} is a folder: allowed is the file {name} there; move the folder away")
        if path.is_file():
            if verify and remote.checksum is not None:
                gunzip = path.suffix == ".gz" and remote.decompressed
                verify_checksum(path, remote.checksum, remote.algorithm, decompress=gunzip)
            return path
    target = folder / remote.filename
    if not download_missing or not remote.urls:
        hint = (
            f"place the file there, or pass download=True to fetch it from {remote.urls[0]}"
            if remote.urls
            else "it has no public download: copy it there by hand"
        )
        raise DatasetNotFoundError(f"{target} not found (data root {folder.parent}); {hint}")
    errors = []
    for url in remote.urls:
        try:
            return download(
                url, target, checksum=remote.checksum, algorithm=remote.algorithm, decompress=remote.decompressed
            )
        except (DownloadError, ChecksumError) as error:
            errors.append(error)
    kind = ChecksumError if all(isinstance(error, ChecksumError) for error in errors) else DownloadError
    tried = "; ".join(f"mirror {i}: {error}" for i, error in enumerate(errors, 1))
    raise kind(f"{target}: no mirror served it ({tried})")
