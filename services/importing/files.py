"""The files of an import: the CSV read (hash, encoding, delimiter, records), the mapping
file, and the rejects report written next to the input.

Before any row is mapped the whole input is read once: its SHA-256 (part of every event
id), its line count (for the progress bar) and a check that it decodes in the chosen
encoding, so that a wrongly encoded file is refused with its line before anything is
published, instead of being imported up to its first accent.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from services.importing.mapping import MappingError, MappingSpec, mapping_from

CHUNK = 1 << 20
DELIMITERS = (",", ";", "\t", "|")
REJECTS_SUFFIX = ".rejects.csv"
REJECTS_HEADER = ("line", "column", "reason")


class CsvFileError(ValueError):
    """The file cannot be imported at all; the message says why and what to do."""


Source = Path | str | bytes | IO[bytes] | IO[str]


@dataclass(frozen=True)
class CsvFile:
    """A CSV input, checked and ready to be read record by record."""

    path: Path
    name: str
    sha256: str
    size: int
    lines: int
    encoding: str
    delimiter: str
    header: list[str]
    spooled: bool = False

    def records(self) -> Iterator[tuple[int, list[str] | csv.Error]]:
        """(line the record starts on, its cells) after the header; a malformed record
        gives the csv module's error instead of cells, and reading goes on after it."""
        with self.path.open("r", encoding=_reading_encoding(self.encoding),
                            newline="") as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            try:
                next(reader)
            except (StopIteration, csv.Error):
                return
            while True:
                start = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    yield start, error
                    continue
                yield start, cells

    def discard(self) -> None:
        """Remove the spooled copy of a stream (a path given by the caller is kept)."""
        if self.spooled:
            self.path.unlink(missing_ok=True)


def _reading_encoding(encoding: str) -> str:
    # A UTF-8 file may start with a byte order mark (Excel writes one): not part of the
    # first header.
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def open_csv(source: Source, *, encoding: str = "utf-8", delimiter: str | None = None,
             name: str | None = None) -> CsvFile:
    """Read the input once (hash, lines, encoding check) and its header; CsvFileError if
    it cannot be imported. A stream or bytes are first copied to a temporary file."""
    try:
        text_encoding = codecs.lookup(encoding)._is_text_encoding
    except LookupError:
        text_encoding = False
    if not text_encoding:  # (base64, zip, rot13 are codecs too, of bytes or of text)
        raise CsvFileError(f"unknown encoding {encoding!r}: use utf-8, cp1252, latin-1, …")
    delimiter = delimiter_named(delimiter)
    path, spooled = _as_path(source)
    shown = name or (str(source) if isinstance(source, Path | str) else "the upload")
    try:
        sha256, size, lines = _scan(path, encoding)
        header_line = _first_line(path, encoding)
        if not header_line.strip():
            raise CsvFileError(f"{shown} is empty: its first line must name the columns "
                               "(email, first_name, …)")
        chosen = delimiter or sniff_delimiter(header_line)
        header = next(csv.reader([header_line], delimiter=chosen))
    except BaseException:
        if spooled:
            path.unlink(missing_ok=True)
        raise
    return CsvFile(path, shown, sha256, size, lines, encoding, chosen, header, spooled)


def _as_path(source: Source) -> tuple[Path, bool]:
    if isinstance(source, Path | str):
        path = Path(source)
        if not path.exists():
            raise CsvFileError(f"{path} does not exist")
        if not path.is_file():
            raise CsvFileError(f"{path} is not a file (a folder?): give the CSV file's path")
        return path, False
    with tempfile.NamedTemporaryFile(prefix="ficha-import-", suffix=".csv",
                                     delete=False) as handle:
        if isinstance(source, bytes):
            handle.write(source)
        else:
            while chunk := source.read(CHUNK):
                handle.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    return Path(handle.name), True


def _scan(path: Path, encoding: str) -> tuple[str, int, int]:
    """SHA-256, size and newline count of the file; CsvFileError on a line that does not
    decode."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder(_reading_encoding(encoding))("strict")
    size = lines = 0
    last = "\n"
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            try:
                text = decoder.decode(chunk)
            except UnicodeError:
                raise CsvFileError(_encoding_problem(path, encoding)) from None
            # Counted in the text: in UTF-16 a newline is more than its 0x0A byte.
            lines += text.count("\n")
            last = text[-1:] or last
        try:
            text = decoder.decode(b"", final=True)
        except UnicodeError:
            raise CsvFileError(_encoding_problem(path, encoding)) from None
        lines += text.count("\n")
        last = text[-1:] or last
    if last != "\n" and size:
        lines += 1  # the last line has no line break
    return digest.hexdigest(), size, lines


def _encoding_problem(path: Path, encoding: str) -> str:
    """Which line does not decode, found by decoding line after line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode(_reading_encoding(encoding) if number == 1 else encoding)
            except UnicodeDecodeError as error:
                byte = raw[error.start:error.start + 1].hex()
                hint = (" (CSV UTF-8 in Excel), or give its encoding, e.g. cp1252 "
                        "(`--encoding cp1252`; in the API, `encoding=cp1252`)"
                        ) if encoding.lower().replace("-", "") in (
                    "utf8", "utf8sig") else ""
                return (f"line {number} is not valid {encoding} (byte 0x{byte} at character "
                        f"{error.start + 1}): save the file as {encoding}{hint}")
            except UnicodeError as error:  # (utf-16 without its byte order mark, say)
                return f"the file cannot be read as {encoding}: {error}"
    return f"the file ends in the middle of a {encoding} character"


def _first_line(path: Path, encoding: str) -> str:
    with path.open("r", encoding=_reading_encoding(encoding), newline="") as handle:
        return handle.readline()


def delimiter_named(text: str | None) -> str | None:
    """The delimiter a user names: one of , ; | or the word tab (or the character);
    None for the header's commonest. CsvFileError for another."""
    if text is None:
        return None
    chosen = "\t" if text.lower() == "tab" else text
    if chosen not in DELIMITERS:
        raise CsvFileError(f"the delimiter must be one of , ; | or tab; got {text[:20]!r}")
    return chosen


def sniff_delimiter(header_line: str) -> str:
    """The one of , ; tab | that occurs most in the header line outside quotes (, if none)."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


# --------------------------------------------------------------------------- mapping


def load_mapping(path: Path) -> MappingSpec:
    """A JSON or YAML mapping file (by its extension: .json, .yaml, .yml)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MappingError([f"cannot read the mapping file {path}: {error}"]) from error
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data: Any = _yaml(text)
        else:
            data = json.loads(text)
    except Exception as error:  # noqa: BLE001 - either parser's syntax error
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        mark = getattr(error, "problem_mark", None)  # where YAML's parser stopped
        if mark is not None:
            first = (f"{getattr(error, 'problem', None) or first} at line {mark.line + 1}, "
                     f"column {mark.column + 1}")
        raise MappingError([f"the mapping file {path} is not valid "
                            f"{'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}"
                            f": {first}"]) from error
    return mapping_from(data, f"the mapping file {path}")


def _yaml(text: str) -> Any:
    """YAML without its implicit booleans: in a mapping, `yes`, `no` and `on` are values
    of cells (truthy: [sí, yes]), not true and false; `true`/`false` still convert."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader


# --------------------------------------------------------------------------- rejects


def rejects_path_for(path: Path) -> Path:
    return path.with_name(path.name + REJECTS_SUFFIX)


class RejectsWriter:
    """Writes rejected rows (line, column, reason) to a temporary file, moved onto the
    report's path at the end: a report from an earlier run is replaced, or removed when
    this run rejected nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._buffer: IO[str] | None = None
        self._writer: Any = None

    def __enter__(self) -> RejectsWriter:
        return self

    def write(self, line: int, column: str, reason: str) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._writer is None:
            self._buffer = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in __exit__
                "w", encoding="utf-8", newline="", delete=False, dir=self.path.parent,
                prefix=f".{self.path.name}.", suffix=".tmp")
            self._writer = csv.writer(self._buffer)
            self._writer.writerow(REJECTS_HEADER)
        self._writer.writerow((line, column, reason))

    def __exit__(self, *exc: object) -> None:
        if self.path is None:
            return
        if self._buffer is None:
            self.path.unlink(missing_ok=True)
            return
        self._buffer.close()
        shutil.move(self._buffer.name, self.path)


def read_rejects(path: Path) -> list[dict[str, str]]:
    """The rows of a rejects report (for tests and the HTTP route)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))

