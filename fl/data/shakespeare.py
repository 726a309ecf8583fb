"""Shakespeare next-character prediction with one client per speaking role.

The federated benchmark of McMahan et al. (2017, "Communication-Efficient Learning
of Deep Networks from Decentralized Data") and LEAF (Caldas et al. 2018): every
speaking role of every play is a client, and a sample is a window of
``seq_len`` = 80 characters of that role's lines whose label is the next character.

Source: the Project Gutenberg modern editions of the plays, ``<root>/shakespeare/
*_gut.txt`` (the Open Shakespeare packaging; the First Folio duplicates
``*_gut_f.txt`` are not read). A file counts as a play when it has an ``ACT`` heading,
which leaves out the poems and sonnets. There is no public download of this
packaging: place the files by hand.

Parsing (:func:`parse_play`): the text before the first ``ACT``/``PROLOGUE``/
``INDUCTION`` heading (title, list of persons) is skipped. A speaker heading is a
line of one to four name words (``HAMLET.``, ``FIRST CITIZEN.``, ``Ham.``,
``MRS. PAGE.``) that follows a blank line or a stage direction; in the plays whose
headings are upper case, only upper-case headings count, which keeps one-word lines
of verse (``Adieu.``) out. A heading may carry its first words of speech
(``ALL. Amen.``). Stage directions (``[Exit.]``, also inline and over several lines)
are removed; act and scene headings end the current speech; songs headed ``SONG``
are dropped. The text under a ``PROLOGUE`` or ``EPILOGUE`` heading is a speech of
that name, unless a speaker heading follows (``EPILOGUE`` / ``ROSALIND.``); a line
repeating the play's title (its file's first line, in whole or its end, with no final
period) is no heading (Troilus and Cressida's ``PROLOGUE`` / ``TROILUS AND CRESSIDA``).
A role is the pair (play, heading as written, upper-cased), so ``hamlet/HAM`` and
``lear/LEAR`` are distinct clients, as in LEAF. Not found: a few dozen headings that
follow a line of speech with no blank line between (most in the history plays); their
speech stays in the previous speaker's text.

Text of a role: its speeches in order, the lines of a speech joined by single
spaces, speeches separated by ``"\\n"``.

Vocabulary (``VOCABULARY``, 96 symbols): ``"\\n"`` at index 0, then the printable
ASCII characters 32 (space) to 126 (``~``) at indices 1 to 95. (LEAF uses a subset of
80 of these.) The plays are pure ASCII; a character outside the vocabulary (a tab, a
non-ASCII letter) would become a space.

Samples and split of role ``r`` with text length ``L``: the windows
``text[t-80:t] -> text[t]`` for every ``t`` in ``[80, L)``, ``n = L - 80`` of them, in
text order. The first ``round((1 - test_fraction) * n)`` are training samples; after a
gap of ``seq_len`` windows (so that no test input contains a training target) the rest
are test samples, as LEAF splits Shakespeare by position rather than at random. Roles
with fewer than ``min_samples`` training samples or no test sample are dropped.

Size: the 37 plays give 1,336 roles, 669 of them with a test sample; 3.61 million
training and 0.35 million test windows. Every sample is materialised as 80 int64
indices (640 bytes, ~2.5 GB in all; ~16 s to build on one core), so use
``max_clients`` and ``max_samples_per_client`` for quick runs.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fl.checks import check_bool, check_fraction, check_integer, check_seed
from fl.data.dataset import ArrayDataset
from fl.data.download import DatasetNotFoundError, data_root

VOCABULARY = "\n" + "".join(chr(code) for code in range(32, 127))
SEQUENCE_LENGTH = 80

_ENCODE = np.full(256, VOCABULARY.index(" "), dtype=np.int64)
for _index, _char in enumerate(VOCABULARY):
    _ENCODE[ord(_char)] = _index

_NAME = re.compile(r"[A-Z][A-Za-z'\-]*\.?(?: [A-Za-z][A-Za-z'\-]*\.?){0,3}")
_START = re.compile(r"^(ACT|Act|PROLOGUE|Prologue|INDUCTION|Induction)\b")
_STRUCTURE = re.compile(
    r"^(?:(?:ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue|INDUCTION|Induction|"
    r"THE END|FINIS|SONG|Song|DUMB SHOW)\b|[IVXL]+\.?$)"
)
_SPOKEN = re.compile(r"^(PROLOGUE|Prologue|EPILOGUE|Epilogue)\.?$")  # a heading whose text is a speech of that name
_CONNECTORS = {"and", "of", "de", "la", "le", "du"}


def encode(text: str) -> np.ndarray:
    """Vocabulary indices (int64) of ``text``; characters outside it (a tab, a non-ASCII
    letter or dash) become spaces."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _ENCODE[np.minimum(codes, len(_ENCODE) - 1)]  # code points past 255 share 255's index, a space


def decode(indices) -> str:
    """Inverse of :func:`encode` (for text within the vocabulary)."""
    return "".join(VOCABULARY[int(i)] for i in indices)


def _is_upper_word(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return sum(c.isupper() for c in letters) > len(letters) / 2


def _valid_name(name: str, upper_style: bool) -> bool:
    words = [w for w in name.split() if w.strip(".").lower() not in _CONNECTORS]
    if not words or not _NAME.fullmatch(name):
        return False
    if upper_style:
        return all(_is_upper_word(w) for w in words)
    return all(w[0].isupper() for w in words)


def _split_heading(line: str, upper_style: bool) -> tuple[str, str] | None:
    """(speaker, first words of speech) if ``line`` is a speaker heading, else None.

    The whole line is tried as a name first (``MRS. PAGE.``), then the part before
    its first ``". "`` with the rest as speech (``ALL. Amen.``).
    """
    if _STRUCTURE.match(line):
        return None
    candidates = [(line, "")]
    if ". " in line:
        head, rest = line.split(". ", 1)
        if rest[:1].isupper() or rest[:1] in "'\"":
            candidates.append((head, rest))
    for name, speech in candidates:
        if _valid_name(name, upper_style):
            return " ".join(name.rstrip(".").upper().split()), speech
    return None


def _repeats_title(line: str, title: str) -> bool:
    """Whether ``line`` repeats the play's ``title`` (its file's first line, upper case), in
    whole or its end (``TROILUS AND CRESSIDA`` of ``THE HISTORY OF TROILUS AND CRESSIDA``),
    without the final period of a speaker heading (``MACBETH.``, a role of ``MACBETH``)."""
    return not line.endswith(".") and (line == title or title.endswith(" " + line))


def _strip_directions(line: str, inside: bool) -> tuple[str, bool]:
    """``line`` without bracketed stage directions; ``inside``: a bracket is open."""
    kept = []
    for char in line:
        if char == "[":
            inside = True
        elif char == "]" and inside:
            inside = False
        elif not inside:
            kept.append(char)
    return "".join(kept), inside


def _upper_style(lines: list[str]) -> bool:
    """Whether a play writes its speaker headings in upper case (most do)."""
    upper = other = 0
    for before, line in zip(lines, lines[1:]):
        line = line.strip()
        if before.strip() == "" and _NAME.fullmatch(line) and not _STRUCTURE.match(line):
            if line.upper() == line:
                upper += 1
            else:
                other += 1
    return upper >= other


def parse_play(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs of one play, in order; see the module docstring."""
    lines = text.replace("\t", " ").splitlines()
    start = next((i for i, line in enumerate(lines) if _START.match(line.strip())), None)
    if start is None:
        return []
    title = next(line.strip().upper() for line in lines if line.strip())
    lines = lines[start:]
    upper_style = _upper_style(lines)
    speeches: list[tuple[str, str]] = []
    speaker, words, inside, after_break = None, [], False, True

    def close() -> None:
        if speaker is not None and words:
            speeches.append((speaker, " ".join(" ".join(words).split())))

    for raw in lines:
        was_inside = inside
        line, inside = _strip_directions(raw.strip(), inside)
        line = line.strip()
        if not line:
            # a blank line, or a line that held only a stage direction
            after_break = after_break or raw.strip() == "" or raw.strip().startswith("[") or was_inside
            continue
        if _STRUCTURE.match(line):
            close()
            spoken = _SPOKEN.match(line)
            speaker, words, after_break = spoken.group(1).upper() if spoken else None, [], True
            continue
        if after_break and _repeats_title(line, title):
            continue
        heading = _split_heading(line, upper_style) if after_break else None
        after_break = False
        if heading is not None:
            close()
            speaker, first = heading
            words = [first] if first else []
        elif speaker is not None:
            words.append(line)
    close()
    return speeches


@dataclass(frozen=True)
class Role:
    """One speaking role: ``play`` (file stem without ``_gut``), ``name``, and its text."""

    play: str
    name: str
    text: str

    @property
    def key(self) -> str:
        return f"{self.play}/{self.name}"


def read_roles(folder: str | os.PathLike) -> tuple[Role, ...]:
    """Every role of every play in ``folder`` (plays by file name, roles by first line).

    Parsed once per process and folder state (file names, sizes, modification times).
    """
    paths = sorted(Path(folder).glob("*_gut.txt"))
    if not paths:
        raise DatasetNotFoundError(
            f"no plays (*_gut.txt) in {folder}; Shakespeare has no download here: "
            "place the Open Shakespeare Project Gutenberg texts there by hand"
        )
    state = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _parse_files(state)


@functools.lru_cache(maxsize=4)
def _parse_files(state: tuple[tuple[str, int, int], ...]) -> tuple[Role, ...]:
    roles = []
    for name, _, _ in state:
        path = Path(name)
        texts: dict[str, list[str]] = {}
        for speaker, speech in parse_play(path.read_text(encoding="utf-8", errors="replace")):
            texts.setdefault(speaker, []).append(speech)
        play = path.name[: -len("_gut.txt")]
        roles.extend(Role(play, role, "\n".join(speeches)) for role, speeches in texts.items())
    return tuple(roles)


@dataclass(frozen=True)
class ShakespeareClients:
    """The Shakespeare dataset with its natural partition (one client per role).

    ``train``/``test``: x int64 (n, seq_len) vocabulary indices, y int64 (n,) index of
    the next character, ``num_classes = len(VOCABULARY)``. ``train_indices[k]`` and
    ``test_indices[k]`` index client ``k``'s samples in ``train`` and ``test``;
    ``roles[k]`` names it (``"play/ROLE"``).
    """

    train: ArrayDataset
    test: ArrayDataset
    train_indices: list[np.ndarray]
    test_indices: list[np.ndarray]
    roles: list[str]
    vocabulary: str = VOCABULARY

    @property
    def num_clients(self) -> int:
        return len(self.roles)


def _windows(codes: np.ndarray, targets: range, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    view = np.lib.stride_tricks.sliding_window_view(codes, seq_len)
    return view[targets.start - seq_len : targets.stop - seq_len], codes[targets.start : targets.stop]


def load_shakespeare_clients(
    root: str | os.PathLike | None = None,
    download: bool = False,
    *,
    seq_len: int = SEQUENCE_LENGTH,
    test_fraction: float = 0.1,
    min_samples: int = 1,
    max_clients: int | None = None,
    max_samples_per_client: int | None = None,
    seed: int = 0,
) -> ShakespeareClients:
    """Roles of the plays in ``<root>/shakespeare`` as clients; see the module docstring.

    ``max_clients``: keep that many eligible roles, drawn at random (``seed``) and kept
    in corpus order. ``max_samples_per_client``: use at most that many windows (train,
    gap and test together) from the start of each role's text.
    """
    check_integer("seq_len", seq_len)
    check_fraction("test_fraction", test_fraction, positive=True)
    check_integer("min_samples", min_samples)
    check_integer("max_clients", max_clients, optional=True)
    check_integer("max_samples_per_client", max_samples_per_client, least=seq_len + 2, optional=True)
    check_bool("download", download)
    check_seed(seed)
    folder = data_root(root) / "shakespeare"
    if download and not folder.is_dir():
        raise DatasetNotFoundError(
            f"{folder} not found; Shakespeare has no download here: place the plays there by hand"
        )
    plans = []  # (role key, codes, train targets, test targets)
    for role in read_roles(folder):
        codes = encode(role.text)
        if max_samples_per_client is not None:
            codes = codes[: max_samples_per_client + seq_len]
        n = len(codes) - seq_len
        n_train = int(round((1.0 - test_fraction) * n))
        train_targets = range(seq_len, seq_len + n_train)
        test_targets = range(seq_len + n_train + seq_len, len(codes))
        if n_train >= min_samples and len(test_targets) >= 1:
            plans.append((role.key, codes, train_targets, test_targets))
    if not plans:
        cap = "" if max_samples_per_client is None else f", max_samples_per_client={max_samples_per_client}"
        raise ValueError(
            f"no role in {folder} keeps min_samples={min_samples} training windows and a test window "
            f"(seq_len={seq_len}, test_fraction={test_fraction}{cap}): allowed are options that leave a role "
            f"at least min_samples / (1 - test_fraction) = {min_samples / (1 - test_fraction):.0f} and "
            f"(seq_len + 1) / test_fraction = {(seq_len + 1) / test_fraction:.0f} windows"
        )
    if max_clients is not None and max_clients < len(plans):
        keep = np.sort(np.random.default_rng(seed).choice(len(plans), size=max_clients, replace=False))
        plans = [plans[i] for i in keep]
    parts = {"train": ([], [], []), "test": ([], [], [])}
    for _, codes, train_targets, test_targets in plans:
        for split, targets in (("train", train_targets), ("test", test_targets)):
            xs, ys, indices = parts[split]
            x, y = _windows(codes, targets, seq_len)
            offset = sum(len(part) for part in ys)
            xs.append(x)
            ys.append(y)
            indices.append(np.arange(offset, offset + len(y), dtype=np.int64))
    datasets = {}
    for split, (xs, ys, _) in parts.items():
        x = np.concatenate(xs) if xs else np.zeros((0, seq_len), dtype=np.int64)
        y = np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64)
        datasets[split] = ArrayDataset("shakespeare", torch.from_numpy(x), torch.from_numpy(y), len(VOCABULARY))
    return ShakespeareClients(
        datasets["train"], datasets["test"], parts["train"][2], parts["test"][2], [key for key, *_ in plans]
    )


def load_shakespeare(
    root: str | os.PathLike | None = None, download: bool = False, **options
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of :func:`load_shakespeare_clients` without the partition."""
    clients = load_shakespeare_clients(root, download, **options)
    return clients.train, clients.test
