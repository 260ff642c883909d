"""The members of a dataset (a folder, .zip or .tar): which are listed, and how one is read.

A dataset is a folder or an archive that someone else assembled, so nothing in it is trusted. One rule for
every kind: a member is read only if it is a regular file, of at most MAX_MEMBER_BYTES, and, in a folder, one
that lies inside the dataset's (resolved) root. Links, FIFOs, devices and sockets are never opened: a FIFO
blocks its reader forever, a link to /dev/zero never ends, a link out of the folder reads what the person
pointing the tool at the folder may not have meant to share (an allow-list checks the root, not what the
root's links point to). Every member refused is counted and named, a few of them, in one log line; the rest
of the dataset is read as usual.

A folder member is opened one path component at a time from the root's descriptor, each with O_NOFOLLOW, so
the file opened lies inside the root by construction; it is looked at (lstat) before it is opened, so a FIFO or
a device is never opened, then opened without blocking and checked again on the descriptor (fstat): a member
swapped for a link or a FIFO in between is refused, never followed or waited on. (A hard link in a folder is a
regular file inside it, as a path sees it, and is read.)

An archive member's size is checked on its header and again on the bytes read, which stop at the cap + 1.
Where an archive holds several members of one name, the last one decides, as extraction would leave it on
disk; if that one is not a regular file, the name is not read at all.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..faces.detect import open_regular, special_kind
from ..labels import printable

log = logging.getLogger(__name__)

# A face image is a JPEG or PNG of a few MB at most: UTKFace's chips are ~10 KB, FairFace's padded crops ~30 KB,
# a 24-megapixel camera JPEG ~10 MB and the same photo as a PNG ~40 MB. 64 MB admits all of them, while one read
# (a zip bomb's member, a file that never ends) can never hold more than this in memory. (predict takes a user's
# one photo up to faces.detect.MAX_PHOTO_BYTES, which any decodable file fits; a face set's member is a crop.)
MAX_MEMBER_BYTES = 64 * 2**20
EXAMPLES = 3  # how many offending names a report quotes

# Why a member is not read; messages are constants so tests can assert them word for word.
WHY_SYMLINK = "a symbolic link"
WHY_LINKED_FOLDER = "a folder reached through a symbolic link"
WHY_HARD_LINK = "a hard link"
WHY_OUTSIDE = "a path out of the dataset"
WHY_TOO_LARGE = "over the {cap} MB an image may take"
WARN_SKIPPED = ("skipped {n} member(s) of {root} that are never read (only regular files inside the dataset, "
                "of at most {cap} MB, are): {examples}")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: should a FIFO be swapped in after the check, opening it returns at once instead of waiting for
# a writer, and fstat then refuses it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ZIP_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, KeyError)
_TAR_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)


class Refused(Exception):
    """A member that the rule does not read; the message says why (a WHY_ constant, or faces.detect's words for
    a special file)."""


@dataclass
class Listing:
    members: list[tuple[str, int]] = field(default_factory=list)  # (member, size): the ones that may be read
    skipped: dict[str, str] = field(default_factory=dict)  # member -> why it is never read


def cap_mb() -> int:
    return MAX_MEMBER_BYTES // 2**20


def too_large() -> str:
    return WHY_TOO_LARGE.format(cap=cap_mb())


def why_not_read(mode: int, size: int) -> str:
    """Why a member of this mode and size (as lstat, a zip header or a tar header gives them) is not read;
    '' when it may be. The one rule for folders, zips and tars."""
    if stat.S_ISLNK(mode):
        return WHY_SYMLINK
    kind = special_kind(mode)  # a FIFO, a device, a socket: in the words predict uses for them
    if kind is not None:
        return kind
    return too_large() if size > MAX_MEMBER_BYTES else ""


def warn_skipped(root: Path, skipped: dict[str, str]) -> None:
    """One warning for all the members of ``root`` that were not read: how many, and a few with why."""
    if skipped:
        examples = "; ".join(f"{printable(m)} ({why})" for m, why in sorted(skipped.items())[:EXAMPLES])
        log.warning(WARN_SKIPPED.format(n=len(skipped), root=printable(root), cap=cap_mb(), examples=examples))


def list_members(path: Path, kind: str, wanted: Callable[[str], bool]) -> Listing:
    """The members of a folder, zip or tar whose names ``wanted`` accepts, those that may be read apart from
    those that may not (a folder reached through a link is named whatever its name). Reports the latter. An
    archive that is not a regular file (a FIFO named x.zip) raises faces.detect.SpecialFile, unopened."""
    if kind == "folder":
        listing = _list_folder(Path(path).resolve(), wanted)
    elif kind == "zip":
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            listing = _listing(_zip_entries(z), wanted)
    else:
        with open_regular(path) as f, tarfile.open(fileobj=f, mode="r:*") as t:
            listing = _listing(_tar_entries(t), wanted)
    warn_skipped(path, listing.skipped)
    return listing


def read_members(path: Path, kind: str, members: Iterable[str]) -> Iterator[tuple[str, bytes | None]]:
    """Each member with its bytes, None when it cannot or may not be read; in ``members`` order for folders
    and zips, in archive order for tars. Members the rule refuses are reported once, after the last."""
    refused: dict[str, str] = {}
    if kind == "folder":
        yield from _read_folder(Path(path), list(members), refused)
    elif kind == "zip":
        yield from _read_zip(Path(path), list(members), refused)
    else:
        yield from _read_tar(Path(path), list(members), refused)
    warn_skipped(path, refused)


def _list_folder(root: Path, wanted: Callable[[str], bool]) -> Listing:
    out = Listing()
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(root / rel if rel else root))
        except OSError:
            if not rel:  # the root itself: the caller says the dataset cannot be read
                raise
            continue  # a subfolder we may not enter, as os.walk skips it
        for e in entries:
            name = f"{rel}/{e.name}" if rel else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:  # removed since the folder was listed
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(name)
            elif stat.S_ISLNK(st.st_mode) and e.is_dir():  # e.is_dir follows the link, never the walk
                out.skipped[name] = WHY_LINKED_FOLDER
            elif wanted(name):
                why = why_not_read(st.st_mode, st.st_size)
                if why:
                    out.skipped[name] = why
                else:
                    out.members.append((name, st.st_size))
    out.members.sort()
    return out


def _read_folder(root: Path, members: list[str], refused: dict[str, str]) -> Iterator[tuple[str, bytes | None]]:
    try:
        root_fd = os.open(root.resolve(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield from ((m, None) for m in members)
        return
    try:
        for m in members:
            data = None
            try:
                data = _read_at(root_fd, m)
            except Refused as e:
                refused[m] = str(e)
            except OSError:
                pass  # gone or unreadable: the caller's decode says so
            yield m, data
    finally:
        os.close(root_fd)


def _read_at(root_fd: int, member: str) -> bytes:
    """The bytes of ``member`` below the root's descriptor: each folder opened without following a link, the
    file itself checked before it is opened (so a FIFO or device is never opened) and again on the descriptor."""
    parts = member.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Refused(WHY_OUTSIDE)
    opened: list[int] = []
    try:
        here = root_fd
        for p in parts[:-1]:
            try:
                here = os.open(p, _DIR_FLAGS, dir_fd=here)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and \
                        stat.S_ISLNK(os.stat(p, dir_fd=here, follow_symlinks=False).st_mode):
                    raise Refused(WHY_LINKED_FOLDER) from e
                raise
            opened.append(here)
        why = why_not_read(os.stat(parts[-1], dir_fd=here, follow_symlinks=False).st_mode, 0)
        if why:
            raise Refused(why)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=here)
        except OSError as e:
            if e.errno == errno.ELOOP:  # swapped for a link since the check above
                raise Refused(WHY_SYMLINK) from e
            raise
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            why = why_not_read(st.st_mode, st.st_size)
            if why:
                raise Refused(why)
            return _capped(f)
    finally:
        for fd in opened:
            os.close(fd)


def _capped(f) -> bytes:
    """At most the cap: a member that has more than its header (or fstat) said is refused, never read whole."""
    data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise Refused(too_large())
    return data


def _zip_mode(info: zipfile.ZipInfo) -> int:
    """The member's Unix mode; one stored without a file type (made on another system, or by writestr) is a
    plain file."""
    mode = info.external_attr >> 16
    return mode if stat.S_IFMT(mode) else mode | stat.S_IFREG


def _zip_entries(z: zipfile.ZipFile) -> dict[str, tuple[str, int, zipfile.ZipInfo]]:
    """name -> (why not read, size, info); the last member of a name decides, as extraction leaves it."""
    out = {}
    for info in z.infolist():
        if not info.is_dir():
            out[info.filename] = (why_not_read(_zip_mode(info), info.file_size), info.file_size, info)
    return out


def _tar_entries(t: tarfile.TarFile) -> dict[str, tuple[str, int, tarfile.TarInfo]]:
    """name -> (why not read, size, info); the last member of a name decides, as extraction leaves it."""
    out = {}
    for info in t.getmembers():
        if info.isdir():
            out.pop(info.name, None)
            continue
        mode = (stat.S_IFREG if info.isreg() else stat.S_IFLNK if info.issym() else stat.S_IFIFO if info.isfifo()
                else stat.S_IFCHR if info.ischr() else stat.S_IFBLK if info.isblk() else 0)
        why = WHY_HARD_LINK if info.islnk() else why_not_read(mode, info.size)
        out[info.name] = (why, info.size, info)
    return out


def _listing(entries: dict, wanted: Callable[[str], bool]) -> Listing:
    out = Listing()
    for name, (why, size, _info) in entries.items():
        if not wanted(name):
            continue
        if why:
            out.skipped[name] = why
        else:
            out.members.append((name, size))
    return out


def _read_zip(path: Path, members: list[str], refused: dict[str, str]) -> Iterator[tuple[str, bytes | None]]:
    with open_regular(path) as archive, zipfile.ZipFile(archive) as z:
        entries = _zip_entries(z)
        for m in members:
            data = None
            why, _size, info = entries.get(m, ("", 0, None))
            if why:
                refused[m] = why
            elif info is not None:
                try:
                    with z.open(info) as f:
                        data = _capped(f)
                except Refused as e:
                    refused[m] = str(e)
                except _ZIP_ERRORS:
                    pass
            yield m, data


def _read_tar(path: Path, members: list[str], refused: dict[str, str]) -> Iterator[tuple[str, bytes | None]]:
    wanted = set(members)
    with open_regular(path) as archive, tarfile.open(fileobj=archive, mode="r:*") as t:
        entries = _tar_entries(t)
        for m in sorted(wanted & entries.keys()):
            if entries[m][0]:
                refused[m] = entries[m][0]
        chosen = {id(e[2]) for m, e in entries.items() if m in wanted and not e[0]}
        for info in t.getmembers():  # archive order: one pass through a compressed stream
            if id(info) not in chosen:
                continue
            data = None
            try:
                f = t.extractfile(info)
                data = _capped(f) if f is not None else None
            except Refused as e:
                refused[info.name] = str(e)
            except _TAR_ERRORS:
                pass
            wanted.discard(info.name)
            yield info.name, data
    yield from ((m, None) for m in members if m in wanted)
