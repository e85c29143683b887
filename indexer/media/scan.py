"""Walk photo folders: recursive, symlink-loop safe, skipping hidden files and OS metadata."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.media.formats import has_image_extension

# Files and folders that operating systems and NAS boxes scatter next to photos.
OS_METADATA_NAMES = frozenset(
    {".DS_Store", "Thumbs.db", "desktop.ini", "@eaDir", "__MACOSX", ".thumbnails"}
)


@dataclass(frozen=True)
class FileEntry:
    """One file found by the walk: an image candidate, or a link that cannot be followed."""

    path: str  # absolute path
    root: str  # the folder the walk started from
    size: int
    mtime_ns: int
    # True: the name says image (decoded directly); False: the file's first bytes decide.
    image_extension: bool = True
    problem: str | None = None  # set for a file that cannot be read at all (a dangling link)


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
    """Yield the files under root in a stable order; follows symlinks but never loops.

    Every file is yielded (whether it is an image is decided later, by its bytes), and so is a
    symlink whose target is missing, with its problem set, so that it can be reported.
    """
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
    path = os.path.abspath(entry.path)
    try:
        if entry.is_dir(follow_symlinks=True):
            return "dir"
        st = entry.stat(follow_symlinks=True)
    except OSError as exc:
        return _broken_link(entry, path, root, exc)
    return FileEntry(path, root, st.st_size, st.st_mtime_ns, has_image_extension(entry.name))


def _broken_link(entry: os.DirEntry[str], path: str, root: str, error: OSError) -> FileEntry | None:
    """A symlink whose target cannot be reached, to be reported; None for a file that vanished."""
    try:
        if not entry.is_symlink():
            return None  # deleted between listing and stat: nothing to index or report
        link = entry.stat(follow_symlinks=False)
        target = os.readlink(entry.path)
    except OSError:
        return None  # the link itself vanished
    reason = error.strerror or str(error)
    problem = f"broken symbolic link (-> {target}: {reason})"
    return FileEntry(path, root, link.st_size, link.st_mtime_ns, image_extension=False, problem=problem)
