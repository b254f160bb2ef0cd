"""Writing decoded images: the destination checked before a decode starts, PNGs written beside their target and
renamed, so a failure never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pid_sdk.errors import InputError


def check_destination(out: Path) -> None:
    """Before any decode: the output can be written where asked (a folder that exists and takes a new file there;
    not a folder itself), proven by creating and removing the temporary file its PNG would be written to."""
    if out.is_dir():
        raise InputError(f"The output {out} is a folder.", received=str(out), expected="a .png file path",
                         fix=f"pass -o {out / 'image.png'}")
    if not out.parent.is_dir():
        exists = out.parent.exists()
        raise InputError(f"The output folder {out.parent} {'is a file, not a folder' if exists else 'does not exist'}.",
                         received=str(out), expected="a path inside an existing folder",
                         fix="choose a path inside a folder" if exists else f"mkdir -p {out.parent}, or choose "
                         "another path")
    os.unlink(temporary_png(out))


def temporary_png(path: Path) -> str:
    """A new empty file beside `path`, where its PNG is written before the rename."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
        os.close(fd)
        return tmp
    except OSError as exc:
        raise cannot_write(path, exc) from None


def cannot_write(path: Path, exc: OSError) -> InputError:
    return InputError(f"Cannot write {path}.", received=f"{type(exc).__name__}: {exc}"[:200],
                      expected="a writable folder with free space",
                      fix="check the folder's permissions and free space, or choose another path")


def write_png_atomic(image, path: Path) -> None:
    """Write beside the target and rename: a failure never leaves a partial PNG."""
    from pid_sdk.checkpoints import usual_permissions

    tmp = temporary_png(path)
    try:
        image.save(tmp, format="PNG")
        usual_permissions(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
