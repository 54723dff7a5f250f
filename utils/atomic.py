"""Atomic file writes: write to a temporary name in the same folder, fsync, rename, fsync the folder.

A reader (or a resumed run) therefore sees either the old complete file or the new complete
file, never a half-written one, even if the process is killed mid-write or the machine loses
power after the rename. Files get the mode an ordinary open() would give (0666 minus the umask),
not mkstemp's 0600.
"""
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path) -> None:
    """Make a rename inside folder `path` durable."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def errno_of_safetensors_error(e: BaseException) -> int | None:
    """The errno of a write that safetensors' Rust writer failed ("Error while serializing: I/O error: No
    space left on device (os error 28)"), which it raises as SafetensorError, not OSError; None otherwise."""
    if type(e).__name__ != "SafetensorError":
        return None
    found = re.search(r"\(os error (\d+)\)", str(e))
    return int(found.group(1)) if found else None


def atomic_write_path(path, write_to) -> None:
    """Atomically create `path` by calling write_to(temporary path) (for writers that take a file
    name, e.g. safetensors' save_file, so large files are not held in memory twice)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        write_to(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # write(2) errors name no file: name it
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write_path(path, write)


def atomic_write_json(path, obj) -> None:
    """Write `obj` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically (no pickle)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


@contextmanager
def locked_folder(folder):
    """An exclusive flock on `folder` itself (its directory descriptor, so no lock file is left behind),
    held for the block: read-modify-writes of a file in it by several processes happen one at a time
    (results.json, when two evaluations share a --results_dir). Waits for the holder."""
    import fcntl

    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
