"""What a checkpoint folder holds on disk, and removing from it: a local folder or an object-store
URI alike, through the pyarrow filesystems that :mod:`mmvit.storage.shared_path` publishes with
(so a deletion reaches exactly where ``publish()`` wrote).

Sizes are decimal (1 MB = 10⁶ bytes), as disks and object stores bill them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mmvit.storage.shared_path import is_uri


@dataclass(frozen=True)
class DiskUsage:
    """Bytes under a checkpoint root and the trial folders (``<phase>/<config key>``) holding them."""

    path: str
    bytes: int
    folders: int
    files: dict[str, int] | None = None
    """``relative path → size`` of every file (None when not asked for)."""

    def describe(self) -> str:
        """``1.2 GB in 36 trial folders (studies/depth/checkpoints)``."""
        return f"{format_bytes(self.bytes)} in {self.folders} trial folder{'s' * (self.folders != 1)} ({self.path})"


def format_bytes(count: float) -> str:
    """``512 B``, ``4.8 MB``, ``2.2 GB``: three significant digits at most, decimal units."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{int(count)} B"


def _filesystem(path: str):
    """(pyarrow filesystem, path inside it) of a folder or a URI."""
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def exists(path: str) -> bool:
    """Whether the folder (or object-store prefix) ``path`` exists; raises when it cannot be asked."""
    import pyarrow.fs

    filesystem, base = _filesystem(path)
    return filesystem.get_file_info(base).type != pyarrow.fs.FileType.NotFound


def disk_usage(root: str, *, depth: int = 2, with_files: bool = False) -> DiskUsage:
    """Everything under ``root`` in one recursive listing (one request per page on an object store).
    A trial folder is a folder ``depth`` levels down that holds at least one file; a missing root
    holds 0 bytes. Raises what the filesystem raises when it cannot be reached."""
    import pyarrow.fs

    filesystem, base = _filesystem(root)
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True))
    files = {}
    for info in infos:
        if info.type == pyarrow.fs.FileType.File:
            files[info.path[len(base):].lstrip("/")] = int(info.size or 0)
    folders = {"/".join(name.split("/")[:depth]) for name in files if name.count("/") >= depth}
    return DiskUsage(root, sum(files.values()), len(folders), files if with_files else None)


def remove_files(folder: str, names: Iterable[str]) -> int:
    """Remove the files ``names`` of ``folder`` where present; returns the bytes freed."""
    import pyarrow.fs

    filesystem, base = _filesystem(folder)
    freed = 0
    for name in names:
        info = filesystem.get_file_info(f"{base}/{name}")
        if info.type == pyarrow.fs.FileType.File:
            filesystem.delete_file(info.path)
            freed += int(info.size or 0)
    return freed


def remove_folder(folder: str) -> bool:
    """Remove ``folder`` and everything in it; False when it was not there."""
    import pyarrow.fs

    filesystem, base = _filesystem(folder)
    if filesystem.get_file_info(base).type == pyarrow.fs.FileType.NotFound:
        return False
    filesystem.delete_dir(base)
    return True
