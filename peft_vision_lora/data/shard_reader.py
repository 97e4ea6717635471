"""Reading WebDataset tar shards: brace patterns, streamed tar members grouped into samples, labels, bad input.

A shard is a plain tar file whose members are grouped into samples by key, as WebDataset does: the key of
``dir/n01440764_10026.JPEG`` is ``dir/n01440764_10026`` (the name up to the first dot of its basename) and its
extension, lowercased, names the field (``jpeg``). Consecutive members with the same key form one sample. A
classification sample has an image (``jpg``, ``jpeg``, ``png``, ``webp``, ...) and a label: ``cls`` (the class index
as text) or ``json`` (an object with a ``label`` index or class name). Class names come from ``labels.txt`` (one
per line) or ``classes.json`` (a list, or a ``{name: index}`` object) next to the shards, or an explicit file.

Tars are read as streams (``tarfile`` mode ``r|*``), never listed, seeked or extracted: only the bytes of regular
members are read into memory, so member names cannot write anywhere (no path traversal) and a shard can come from a
pipe or a URL as well as a file: ``pipe:CMD`` reads the stdout of a shell command, ``http(s)://`` streams the URL.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import tarfile
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

LABEL_FILES = ("labels.txt", "classes.json")
MANIFEST = "shards.json"  # written by `peft-vision-lora shard`: splits, their patterns and sample counts
IMAGE_FIELDS = tuple(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class ShardError(ValueError):
    """Unreadable shard input; ``shard`` and ``key`` (when there is one) name where, ``reason`` says what."""

    def __init__(self, shard: str, reason: str, key: str | None = None):
        where = f"{shard}, sample {key!r}" if key is not None else shard
        super().__init__(f"{where}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


# ------------------------------------------------------------------------------------------------------ patterns


def expand_pattern(pattern: str) -> list[str]:
    """Expand WebDataset brace notation: ``train-{000000..000127}.tar`` (a numeric range, zero-padded to the width
    of its first number when that has leading zeros), ``{a,b,c}`` (alternatives), several braces (every
    combination, in order), and ``::`` between patterns (their concatenation)."""
    if "::" in pattern:
        return [url for part in pattern.split("::") for url in expand_pattern(part)]
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise ValueError(f"Unbalanced brace in shard pattern {pattern!r}")
        return [pattern]
    end = pattern.find("}", start)
    if end < 0 or "{" in pattern[start + 1 : end]:
        raise ValueError(f"Unbalanced or nested brace in shard pattern {pattern!r}")
    body, head, tail = pattern[start + 1 : end], pattern[:start], expand_pattern(pattern[end + 1 :])
    match = _RANGE.match(body)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        if last < first:
            raise ValueError(f"Empty range {{{body}}} in shard pattern {pattern!r}: {last} < {first}")
        digits = match.group(1).lstrip("-")
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        choices = [f"{i:0{width}d}" for i in range(first, last + 1)]
    else:
        choices = body.split(",")
    return [head + choice + rest for choice, rest in itertools.product(choices, tail)]


def compress_range(names: Sequence[str]) -> str:
    """The brace pattern of consecutive zero-padded numbers, e.g. ``{000000..000009}`` (the inverse of a range)."""
    return names[0] if len(names) == 1 else f"{{{names[0]}..{names[-1]}}}"


def looks_like_shards(source: Any) -> bool:
    """Whether ``--dataset`` names tar shards: a pattern or path ending in ``.tar``, a ``pipe:`` command, or a
    folder written by ``peft-vision-lora shard`` (it holds ``shards.json``)."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if text.startswith("pipe:") or "::" in text:
        return True
    if "{" not in text and Path(text, MANIFEST).is_file():
        return True
    try:
        first = expand_pattern(text)[0]
    except ValueError:
        return False
    return first.lower().endswith(SHARD_SUFFIXES)


# --------------------------------------------------------------------------------------------------- tar reading


class _Closing:
    """A stream plus what must happen when it is closed (a pipe's exit status is checked)."""

    def __init__(self, stream: IO[bytes], process: subprocess.Popen | None = None, url: str = ""):
        self.stream, self.process, self.url, self.reported = stream, process, url, False

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def close(self, check: bool = True) -> None:
        self.stream.close()
        if self.process is None:
            return
        if not check:  # abandoned before its end: the command need not finish
            self.process.kill()
        if self.process.wait() != 0 and check and not self.reported:
            raise ShardError(self.url, f"the pipe command exited with status {self.process.returncode}")


def open_shard(url: str) -> _Closing:
    """A byte stream of one shard: a local path, ``file://``, ``http(s)://`` or ``pipe:CMD`` (shell command stdout).

    Raises :class:`ShardError` when it cannot be opened (a missing file names the path)."""
    try:
        if url.startswith("pipe:"):
            process = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)  # noqa: S602 (the user's command)
            return _Closing(process.stdout, process, url)
        if url.startswith(("http://", "https://")):
            return _Closing(urllib.request.urlopen(url, timeout=60), url=url)  # noqa: S310
        path = url[len("file://") :] if url.startswith("file://") else url
        return _Closing(open(path, "rb"), url=url)  # noqa: SIM115 (closed by the reader)
    except FileNotFoundError as exc:
        raise ShardError(url, "shard not found") from exc
    except OSError as exc:
        raise ShardError(url, f"cannot open shard ({exc})") from exc


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, field)`` of a tar member name as WebDataset splits it; None for names without an extension."""
    folder, base = os.path.split(name)
    if "." not in base or base.startswith("."):
        return None
    stem, field = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), field.lower()


def iter_tar_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {field: bytes})`` samples of one shard, in tar order.

    Only regular files are read (directories, links and devices are skipped), and WebDataset's ``__key__``-style
    metadata members (names starting with ``__``) are ignored. A truncated or corrupt tar raises
    :class:`ShardError` after the samples read before the damage, naming the last good key.
    """
    stream = open_shard(url)
    key, fields, last, complete = None, {}, None, False
    try:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    parts = split_name(member.name) if member.isfile() else None
                    if parts is None or os.path.basename(member.name).startswith("__"):
                        continue
                    member_key, field = parts
                    data = tar.extractfile(member).read()  # the bytes only: nothing is written to disk
                    if member_key != key:
                        if key is not None:
                            last = key
                            yield key, fields
                        key, fields = member_key, {}
                    fields[field] = data
                # A tar ends with a zero block; tarfile takes a missing or partial header for the end, so a shard
                # cut at a member boundary would pass unnoticed without this check.
                if tar.fileobj.pos - tar.offset < tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("no end-of-archive marker")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            after = f" after sample {last!r}" if last else " before its first sample"
            if stream.process is not None and stream.process.wait() != 0:  # the command's failure explains it
                stream.reported = True
                raise ShardError(url, f"the pipe command exited with status {stream.process.returncode}") from exc
            raise ShardError(url, f"truncated or corrupt tar{after} ({type(exc).__name__}: {exc})") from exc
        complete = True
        if key is not None:
            yield key, fields
    finally:
        stream.close(check=complete)


# ------------------------------------------------------------------------------------------------------- labels


def read_label_file(path: str | os.PathLike) -> list[str]:
    """Class names from ``labels.txt`` (one per line, in index order) or ``classes.json`` (a list of names, or an
    object mapping each name to its index 0..N-1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Label file {path} does not exist.")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            by_index = sorted((int(index), str(name)) for name, index in data.items())
            if [i for i, _ in by_index] != list(range(len(by_index))):
                raise ValueError(f"{path}: class indices must be 0..{len(by_index) - 1}, each once")
            names = [name for _, name in by_index]
        elif isinstance(data, list):
            names = [str(name) for name in data]
        else:
            raise ValueError(f"{path}: expected a list of class names or a {{name: index}} object")
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no classes.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path} lists class(es) more than once: {duplicates[:5]}")
    return names


def find_label_file(urls: Sequence[str]) -> Path:
    """``labels.txt`` or ``classes.json`` in the folder of the first shard (local shards only)."""
    first = urls[0][len("file://") :] if urls[0].startswith("file://") else urls[0]
    if "://" in first or first.startswith("pipe:"):
        raise ValueError(
            f"The shards {urls[0]} are not local files: pass the class names with --label_file (labels.txt or "
            "classes.json)."
        )
    folder = Path(first).parent
    for name in LABEL_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"No {' or '.join(LABEL_FILES)} next to the shards in {folder}: pass the class names with --label_file."
    )


@dataclass(frozen=True)
class Sample:
    """One checked classification sample of a shard: the encoded image, its field, label index and names."""

    shard: str
    key: str
    field: str
    image: bytes
    label: int

    @property
    def name(self) -> str:
        """Where the sample comes from, as messages name it: ``shard/key.field``."""
        return f"{self.shard}/{self.key}.{self.field}"


def parse_sample(shard: str, key: str, fields: dict[str, bytes], classes: dict[str, int]) -> Sample:
    """Check one raw sample and return it; :class:`ShardError` names the shard and key of a sample without an
    image, without a label, or whose label is not one of ``classes`` (class name -> index, built once per shard)."""
    field = next((f for f in fields if f in IMAGE_FIELDS), None)
    if field is None:
        raise ShardError(shard, f"no image (fields: {', '.join(sorted(fields)) or 'none'})", key)
    if "cls" in fields:
        raw: Any = fields["cls"].decode("utf-8", "replace").strip()
        value: Any = int(raw) if re.fullmatch(r"-?\d+", raw) else raw
    elif "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except ValueError as exc:
            raise ShardError(shard, f"unreadable .json ({exc})", key) from exc
        if not isinstance(meta, dict) or meta.get("label") is None:
            raise ShardError(shard, "no label: its .json has no 'label'", key)
        value = meta["label"]
    else:
        raise ShardError(shard, "no label (.cls or a .json with 'label')", key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ShardError(shard, f"label {value!r} is neither a class index nor a class name", key)
    if isinstance(value, int):
        count = len(classes)
        if not 0 <= value < count:
            raise ShardError(shard, f"label {value} is not one of the {count} classes (0..{count - 1})", key)
        label = value
    else:
        if value not in classes:
            raise ShardError(shard, f"label {value!r} is not in the label file's {len(classes)} classes", key)
        label = classes[value]
    return Sample(shard, key, field, fields[field], label)


def iter_shard(url: str, names: Sequence[str], on_bad: str = "skip") -> Iterator[Sample | ShardError]:
    """Checked samples of one shard in tar order. A bad sample, a missing shard or a truncated tar is yielded as a
    :class:`ShardError` (``on_bad="skip"``: the caller counts and skips it, and reading goes on) or raised
    (``"error"``)."""
    classes = {name: i for i, name in enumerate(names)}
    try:
        for key, fields in iter_tar_samples(url):
            try:
                yield parse_sample(url, key, fields, classes)
            except ShardError as error:
                if on_bad == "error":
                    raise
                yield error
    except ShardError as error:  # the shard itself: missing, truncated, a failed pipe
        if on_bad == "error":
            raise
        yield error
