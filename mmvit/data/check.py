"""``mmvit-study data check``: what an archive holds and which of its files are broken."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mmvit.data.archive import Archive, PatchRef, Presence, V1Archive, folder_entries
from mmvit.data.bands import S1_BANDS, S2_BANDS
from mmvit.data.patch_reader import PatchReader
from mmvit.data.splits import SPLITS
from mmvit.errors import DataError


@dataclass
class SplitReport:
    split: str
    patches: int
    presence: Presence
    missing: list[tuple[str, str]] = field(default_factory=list)  # (patch, file)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (patch, error)


@dataclass
class ArchiveReport:
    root: Path
    layout: str
    split_source: str
    splits: list[SplitReport]
    on_disk: int | None = None

    @property
    def ok(self) -> bool:
        return all(not s.missing and not s.unreadable for s in self.splits)

    @property
    def complete(self) -> bool:
        """Every listed patch pair of every split is on disk."""
        return all(s.presence.complete for s in self.splits)


def expected_files(archive: Archive, ref: PatchRef) -> Iterator[Path]:
    """Every file the dataset reads for one patch."""
    for band in S2_BANDS:
        yield ref.s2_dir / f"{ref.patch}_{band}.tif"
    for band in S1_BANDS:
        yield ref.s1_dir / f"{ref.s1_patch}_{band}.tif"
    if isinstance(archive, V1Archive):
        yield ref.s2_dir / f"{ref.patch}_labels_metadata.json"


def _check_patch(archive: Archive, ref: PatchRef, deep: bool,
                 reader: PatchReader) -> tuple[str | None, str | None]:
    for path in expected_files(archive, ref):
        if not path.is_file():
            return str(path), None
    if deep:
        try:
            reader(ref)
        except DataError as error:
            return None, str(error)
    return None, None


def check_archive(archive: Archive, *, deep: bool = False, threads: int = 8,
                  progress: bool = False) -> ArchiveReport:
    """Count the patches of each split and find missing (and with ``deep``, unreadable) files."""
    from rich.progress import Progress

    reader = PatchReader()
    reports = []
    with Progress(disable=not progress) as bar, ThreadPoolExecutor(threads) as pool:
        for split in SPLITS:
            refs = archive.patches(split)
            report = SplitReport(split, len(refs), archive.presence(split))
            task = bar.add_task(f"checking {split}", total=len(refs))
            results = pool.map(lambda r: _check_patch(archive, r, deep, reader), refs, chunksize=64)
            for ref, (missing, unreadable) in zip(refs, results):
                if missing:
                    report.missing.append((ref.patch, missing))
                if unreadable:
                    report.unreadable.append((ref.patch, unreadable))
                bar.advance(task)
            reports.append(report)
    on_disk = None
    if isinstance(archive, V1Archive):
        on_disk = len(folder_entries(archive.s2_base))  # the listing the split scan already made
    return ArchiveReport(archive.root, archive.layout, archive.split_source, reports, on_disk)
