"""Walk photo folders: recursive, symlink-loop safe, skipping hidden files and OS metadata."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.media.images import IMAGE_EXTENSIONS

# Files and folders that operating systems and NAS boxes scatter next to photos.
OS_METADATA_NAMES = frozenset(
    {".DS_Store", "Thumbs.db", "desktop.ini", "@eaDir", "__MACOSX", ".thumbnails"}
)


@dataclass(frozen=True)
class FileEntry:
    """One candidate image file found by the walk."""

    path: str  # absolute path
    root: str  # the folder the walk started from
    size: int
    mtime_ns: int
    image_type: bool = True  # False: an extension no image decoder claims (reported, not decoded)


@dataclass(frozen=True)
class ScanOptions:
    """What the walk includes."""

    exclude: tuple[str, ...] = ()
    include_hidden: bool = False


def _is_hidden_or_metadata(name: str, include_hidden: bool) -> bool:
    if name in OS_METADATA_NAMES or name.startswith("._"):
        return True
    return not include_hidden and name.startswith(".")


def _excluded(path: str, root: str, patterns: Sequence[str]) -> bool:
    relative = os.path.relpath(path, root)
    name = os.path.basename(path)
    return any(
        fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p)
        for p in patterns
    )


def scan_folder(root: Path, options: ScanOptions = ScanOptions()) -> Iterator[FileEntry]:
    """Yield image files under root in a stable order; follows symlinks but never loops."""
    root_str = os.path.abspath(root)
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root_str]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable or vanished folder: nothing to index there
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue  # a symlink loop or a second link to the same folder
        seen_dirs.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            if _is_hidden_or_metadata(entry.name, options.include_hidden):
                continue
            if options.exclude and _excluded(entry.path, root_str, options.exclude):
                continue
            found = _file_entry(entry, root_str)
            if isinstance(found, FileEntry):
                yield found
            elif found == "dir":
                subfolders.append(entry.path)
        stack.extend(reversed(subfolders))


def _file_entry(entry: os.DirEntry[str], root: str) -> FileEntry | str | None:
    try:
        if entry.is_dir(follow_symlinks=True):
            return "dir"
        st = entry.stat(follow_symlinks=True)
    except OSError:
        return None  # dangling symlink or vanished file: not a candidate
    image_type = Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
    return FileEntry(os.path.abspath(entry.path), root, st.st_size, st.st_mtime_ns, image_type)
