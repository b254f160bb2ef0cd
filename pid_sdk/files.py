"""Opening the files the SDK reads: each judged by what it is before a byte of it is read.

A path is opened without blocking (O_NONBLOCK: a FIFO cannot hang the open) and `fstat` of the open descriptor then
says what it is: only a regular file is read, and only after its size is checked against a bound (a symbolic link
to /dev/zero is a device, not an endless file). A file of a folder (an engine folder, an SDK artefact) must stay
inside it: no absolute path, no '..', no symbolic link leading out, and the final component is opened with
O_NOFOLLOW once its resolved path is known to be inside. The C++ runtime opens files the same way
(bindings/cpp/files.h). JSON is read with bounds on its size, nesting and the length of its numbers before it is
parsed, so a 200,000-deep array or a 5,000-digit integer is a refusal, not a RecursionError or a long computation.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from pid_sdk.errors import CheckpointError, PiDError

MAX_JSON_BYTES = 16 << 20  # far above any manifest (a 1.3B engine folder's is ~100 KB)
MAX_JSON_NESTING = 32  # manifests nest five deep
MAX_NUMBER_DIGITS = 40  # int64 has 19 digits; a float's repr has 17 significant ones plus an exponent
MAX_WEIGHTS_BYTES = 256 << 30  # any checkpoint, artefact or graph file
KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def open_regular(path: str | Path, *, what: str, max_bytes: int = MAX_WEIGHTS_BYTES,
                 error: type[PiDError] = CheckpointError, follow: bool = True) -> BinaryIO:
    """`path` opened for reading if it is a regular file of at most `max_bytes`; a PiDError of type `error`
    naming what it is otherwise. `follow=False` refuses a symbolic link as the last component."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, what, exc, error) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise error(f"The {what} {path} is {kind}, not a regular file.", received=str(path)[:300],
                        expected=f"a regular {what}", fix="pass the file itself")
        if info.st_size > max_bytes:
            raise error(f"The {what} {path} is larger than any {what} this SDK reads.",
                        received=f"{info.st_size:,} bytes", expected=f"at most {max_bytes:,} bytes",
                        fix="check that the path names the right file")
        os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_error(path, what: str, exc: OSError, error: type[PiDError]) -> PiDError:
    why = {errno.ENOENT: "it does not exist", errno.ENAMETOOLONG: "the path is too long",
           errno.ELOOP: "it is a symbolic link (or a loop of them)", errno.EACCES: "permission denied",
           errno.ENOTDIR: "a part of the path is not a folder", errno.EISDIR: "it is a folder"}.get(exc.errno,
                                                                                                exc.strerror)
    fix = "pass a shorter path" if exc.errno == errno.ENAMETOOLONG else "check the path"
    what_happened = f"No {what} at {path}." if exc.errno == errno.ENOENT else f"Cannot open the {what}: {why}."
    return error(what_happened[:400], received=str(path)[:300], expected=f"a readable {what}", fix=fix)


def is_folder(path: str | Path, *, what: str = "model", error: type[PiDError] = CheckpointError) -> bool:
    """Whether `path` is a folder (following links); False when nothing is there; a PiDError when the path itself
    cannot be looked at (too long, a loop of links, no permission)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return False
        raise _open_error(path, what, exc, error) from None


def inside(folder: str | Path, rel: object, *, what: str = "file") -> Path:
    """`folder / rel`, refused unless it stays inside the folder: no absolute path, no '..', no symbolic link
    leading out."""
    root = Path(folder).resolve()
    bad = not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute() or ".." in Path(rel).parts
    if not bad:
        try:
            bad = not (root / rel).resolve().is_relative_to(root)
        except (OSError, RuntimeError):  # too long, or a loop of links
            bad = True
    if bad:
        raise CheckpointError(f"The manifest of {folder} names a {what} outside its folder.", received=repr(rel)[:200],
                              expected="a relative path inside the folder (no absolute path, no '..', no symbolic "
                                       "link leading out)",
                              fix="rebuild the folder with pid-sdk export / build / convert; never edit paths by hand")
    return root / rel


def open_in_folder(folder: str | Path, rel: object, *, what: str, max_bytes: int = MAX_WEIGHTS_BYTES) -> BinaryIO:
    """A regular file of a folder: confined (`inside`), then opened as `open_regular` opens files."""
    return open_regular(inside(folder, rel, what=what), what=what, max_bytes=max_bytes)


def sha256_of(file: BinaryIO, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    while block := file.read(chunk):
        h.update(block)
    return h.hexdigest()


def read_json(file: BinaryIO, *, what: str, error: type[PiDError] = CheckpointError,
              fix: str = "write the file again with the tool that made it") -> object:
    """The JSON value of an open file, read only within MAX_JSON_BYTES, MAX_JSON_NESTING and MAX_NUMBER_DIGITS;
    NaN and Infinity refused."""
    data = file.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise error(f"The {what} is larger than any {what} is.", received=f"more than {MAX_JSON_BYTES:,} bytes",
                    expected=f"at most {MAX_JSON_BYTES:,} bytes", fix=fix)
    try:
        text = data.decode("utf-8")
        depth = nesting(text)
        if depth > MAX_JSON_NESTING:
            raise ValueError(f"nested {depth} deep (at most {MAX_JSON_NESTING})")
        return json.loads(text, parse_int=_bounded(int), parse_float=_bounded(float), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise error(f"The {what} is not valid JSON within the SDK's bounds.", received=str(exc)[:200],
                    expected=f"UTF-8 JSON, nested at most {MAX_JSON_NESTING} deep, numbers of at most "
                             f"{MAX_NUMBER_DIGITS} characters", fix=fix) from None


def nesting(text: str) -> int:
    """How deep the brackets of a JSON text nest, outside its strings (read before the parser recurses)."""
    deepest = depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _bounded(kind):
    def parse(token: str):
        if len(token) > MAX_NUMBER_DIGITS:
            raise ValueError(f"a number of {len(token)} characters: {token[:20]}...")
        value = kind(token)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"a number out of range: {token[:40]}")
        return value

    return parse


def _no_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def digest(data: dict) -> str:
    """The sha256 of a manifest's content (canonical JSON: sorted keys, no spaces), its own digest left out: every
    label, shape, path and configuration value it holds is covered, so an edit by hand is refused."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_digest(data: dict, path: object, verify: bool, fix: str) -> None:
    """Refuse a manifest whose content is not what its digest says (unless the caller opts out)."""
    if not verify:
        return
    recorded = data.get("manifest_sha256")
    if recorded is None:
        raise CheckpointError(f"{path} has no digest (manifest_sha256): it cannot be checked for edits.",
                              fix=f"{fix}, or pass verify=False (CLI: --no-verify) to read it unchecked")
    if recorded != digest(data):
        raise CheckpointError(f"{path} was edited after it was written (its content does not match its digest).",
                              received=f"content sha256 {digest(data)[:16]}...", expected=f"{recorded[:16]}...",
                              fix=f"{fix}; never edit a manifest by hand")
