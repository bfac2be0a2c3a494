"""Where a study's checkpoints and Ray results live: a folder (local, or a shared mount every
node of a cluster sees) or an object-store URI (``s3://``, ``gs://``, ``file://`` …, through
pyarrow's filesystems — the ones Ray Tune itself uses for ``storage_path``).

A trial resumed on another node must find the epoch checkpoint the first node wrote, so on a
multi-node cluster this path has to be shared. With a URI, a trial trains against a local
staging folder that is filled from the store before it starts and pushed after every epoch.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mmvit.errors import StudyError


def is_uri(path: str) -> bool:
    return "://" in path


def resolve_root(storage_path: str | None, studies_dir: Path) -> str:
    """The root every study folder goes under: ``--storage-path`` (a URI as given, a folder
    made absolute, since Ray trials run elsewhere) or ``--studies-dir``."""
    if storage_path is None:
        return str(Path(studies_dir).resolve())
    if is_uri(storage_path):
        import pyarrow.fs

        try:
            pyarrow.fs.FileSystem.from_uri(storage_path)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError … by scheme
            raise StudyError(f"--storage-path {storage_path} is not a storage pyarrow can open "
                             f"({type(error).__name__}: {str(error).splitlines()[0]}). Use a folder every node "
                             "mounts, or an s3://, gs://, hdfs:// or file:// URI.") from None
        return storage_path.rstrip("/")
    return str(Path(storage_path).expanduser().resolve())


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_uri(root) else str(Path(root, *parts))


@contextmanager
def trial_checkpoints(folder: str) -> Iterator[tuple[Path, Callable[[], None]]]:
    """(the local folder a trial saves its checkpoints in, a function that publishes them).
    For a plain folder they are the same place and publishing does nothing."""
    if not is_uri(folder):
        yield Path(folder), lambda: None
        return
    import pyarrow.fs

    remote, base = pyarrow.fs.FileSystem.from_uri(folder)
    local_fs = pyarrow.fs.LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="mmvit-checkpoints-") as staging:
        if remote.get_file_info(base).type == pyarrow.fs.FileType.Directory:
            pyarrow.fs.copy_files(base, staging, source_filesystem=remote, destination_filesystem=local_fs)

        def publish() -> None:
            remote.create_dir(base, recursive=True)
            if not isinstance(remote, pyarrow.fs.LocalFileSystem):  # an object is written whole or not at all
                pyarrow.fs.copy_files(staging, base, source_filesystem=local_fs, destination_filesystem=remote)
                return
            # A shared folder (file://): copying over last.pt in place could leave it cut short if the
            # trial is killed mid-copy, and a resume would then fail to load it. Copy, then rename.
            for name in sorted(p.name for p in Path(staging).iterdir() if p.is_file()):
                partial = f"{base}/{name}.partial"
                pyarrow.fs.copy_files(f"{staging}/{name}", partial, source_filesystem=local_fs,
                                      destination_filesystem=remote)
                remote.move(partial, f"{base}/{name}")

        yield Path(staging), publish
