"""NAR reader and restorer: a strict push parser, and a restorer that builds the tree safely.

A NAR comes from the network, so it is hostile until parsed. The parser is as strict as Guix's
`restore-file` and Nix's `parseDump`, and stricter where they trust the filesystem to refuse:
it accepts exactly the NARs that `iter_nar` could have written, so anything it accepts dumps
back to the same bytes. It is a push parser (`NarParser.feed(chunk) -> events`) with no I/O,
so async code can drive it chunk by chunk as bytes arrive.

The restorer never writes outside its destination, with two independent layers: the parser
rejects names that are empty, `.`, `..`, or contain `/` or NUL, and entries that are not in
strictly increasing byte order (so no name is ever created twice); and every file, directory
and symlink is created relative to a directory file descriptor with O_EXCL/O_NOFOLLOW, so even
a name that slipped through could not be resolved through a symlink the NAR created. The tree
is built in a fresh sibling directory of the destination and moved into place only once the
whole NAR has been read (and, when asked, its hash checked); on any error the partial tree is
deleted, read-only directories included.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import struct
from collections.abc import Iterable
from typing import BinaryIO, NamedTuple

from p2pcache.errors import NarFormatError, NarRestoreError
from p2pcache.guix.nar import NAR_MAGIC, NarHasher, NarSummary, nar_string

# --- limits (each a property of the platform or a generous bound on real store items) ---

# Linux's NAME_MAX: no filesystem we restore onto takes a longer name.
MAX_NAME_LENGTH = 255
# Linux refuses symlink targets of PATH_MAX (4096) bytes or more, counting the final NUL.
MAX_SYMLINK_TARGET_LENGTH = 4095
# The longest keyword is "nix-archive-1" (13 bytes); a longer token is garbage, reported early.
MAX_TOKEN_LENGTH = 16
# Real store items nest a few dozen directories deep; the restorer holds one descriptor per
# level, so the depth is bounded well below the usual 1024-descriptor limit.
MAX_DEPTH = 256
# The largest Guix substitutes are a few GB; 64 GiB bounds what a hostile peer can make us
# write unless the caller knows better (the NarSize it expects, typically).
DEFAULT_MAX_NAR_SIZE = 64 << 30

DEFAULT_READ_SIZE = 1 << 20

# --- events ---


class DirectoryStart(NamedTuple):
    """A directory begins; `name` is None for the root of the NAR."""

    name: bytes | None


class DirectoryEnd(NamedTuple):
    """The innermost open directory is complete."""


class FileStart(NamedTuple):
    """A regular file begins; `size` bytes of FileData follow, then FileEnd."""

    name: bytes | None
    executable: bool
    size: int


class FileData(NamedTuple):
    """Some of the current file's contents (a view of the bytes passed to `feed`)."""

    data: memoryview


class FileEnd(NamedTuple):
    """The current regular file is complete."""


class Symlink(NamedTuple):
    """A symbolic link; the target is stored as is and may point anywhere."""

    name: bytes | None
    target: bytes


NarEvent = DirectoryStart | DirectoryEnd | FileStart | FileData | FileEnd | Symlink

# --- parser ---

# Parser states: what the next item of the NAR must be.
_MAGIC = 0  # str "nix-archive-1"
_NODE_OPEN = 1  # "("
_NODE_TYPE = 2  # "type"
_TYPE = 3  # "regular" | "symlink" | "directory"
_REGULAR = 4  # "executable" | "contents"
_EXECUTABLE = 5  # "" (the executable marker's empty value)
_CONTENTS = 6  # "contents" (after the executable marker)
_SIZE = 7  # u64 LE: the file's length
_DATA = 8  # the file's bytes (streamed)
_PAD = 9  # the file's padding: zero bytes up to a multiple of 8
_NODE_CLOSE = 10  # ")" ending a file or symlink node
_TARGET_KEYWORD = 11  # "target"
_TARGET = 12  # the symlink target
_DIRECTORY = 13  # "entry" | ")" ending the directory node
_ENTRY_OPEN = 14  # "("
_NAME_KEYWORD = 15  # "name"
_NAME = 16  # the entry name
_NODE_KEYWORD = 17  # "node"
_ENTRY_CLOSE = 18  # ")" ending the entry
_DONE = 19  # nothing more may follow

_EXPECTED = {
    _MAGIC: NAR_MAGIC,
    _NODE_OPEN: b"(",
    _NODE_TYPE: b"type",
    _EXECUTABLE: b"",
    _CONTENTS: b"contents",
    _NODE_CLOSE: b")",
    _TARGET_KEYWORD: b"target",
    _ENTRY_OPEN: b"(",
    _NAME_KEYWORD: b"name",
    _NODE_KEYWORD: b"node",
    _ENTRY_CLOSE: b")",
}
# States whose single expected keyword leads straight to the next state.
_NEXT = {
    _NODE_OPEN: _NODE_TYPE,
    _NODE_TYPE: _TYPE,
    _EXECUTABLE: _CONTENTS,
    _CONTENTS: _SIZE,
    _TARGET_KEYWORD: _TARGET,
    _ENTRY_OPEN: _NAME_KEYWORD,
    _NAME_KEYWORD: _NAME,
    _NODE_KEYWORD: _NODE_OPEN,
}


_U64 = struct.Struct("<Q")
_ZEROS = tuple(bytes(n) for n in range(8))

# Fixed tokens matched whole on the fast path: state -> (encoded token, next state). For
# _NODE_CLOSE the next state depends on the nesting (see `_end_node`).
_FAST_TOKENS = {
    state: (nar_string(token), _NEXT.get(state, state)) for state, token in _EXPECTED.items()
}
_FAST_TOKENS[_MAGIC] = (nar_string(NAR_MAGIC), _NODE_OPEN)
_FAST_TOKENS[_ENTRY_CLOSE] = (nar_string(b")"), _DIRECTORY)
_FAST_TOKENS[_TYPE] = (nar_string(b"regular"), _REGULAR)
_FAST_TOKENS[_REGULAR] = (nar_string(b"contents"), _SIZE)
_FAST_TOKENS[_DIRECTORY] = (nar_string(b"entry"), _ENTRY_OPEN)


def _string_limit(state: int) -> int:
    if state == _TARGET:
        return MAX_SYMLINK_TARGET_LENGTH
    if state == _NAME:
        return MAX_NAME_LENGTH
    return MAX_TOKEN_LENGTH


class NarParser:
    """Incremental, strict NAR parser: `feed` bytes as they arrive, get events back.

    Call `finish()` after the last chunk: it raises if the NAR is incomplete. Every violation
    raises NarFormatError naming the problem and its byte offset; after an error the parser
    must not be used again. Pure: no I/O, no clock.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_NAR_SIZE) -> None:
        self._max_size = max_size
        self._state = _MAGIC
        self._fed = 0  # bytes passed to feed so far
        self._pending = b""  # an incomplete item carried over to the next feed
        self._pending_at = 0  # its offset in the NAR
        self._name: bytes | None = None  # name of the node being read; None for the root
        self._executable = False
        self._remaining = 0  # file bytes still to come in state _DATA
        self._pad = 0  # padding bytes expected in state _PAD
        # One item per open directory: the name of its latest entry (None before the first).
        # Together they are the path of the current node, used in error messages.
        self._dirs: list[bytes | None] = []

    @property
    def is_complete(self) -> bool:
        """True once the whole NAR has been read."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[NarEvent]:
        """Parse the next bytes of the NAR; return the events they complete.

        FileData events are views of `data` (copied first unless it is `bytes`), so they stay
        valid after the call.
        """
        if not isinstance(data, bytes):
            data = bytes(data)
        start = self._fed
        self._fed += len(data)
        if self._fed > self._max_size:
            raise NarFormatError(f"the NAR is larger than the limit of {self._max_size} bytes")
        events: list[NarEvent] = []
        off = 0
        if self._pending:
            off = self._complete_pending(data, events)
            if self._pending:
                return events
        end = len(data)
        off = self._parse(data, off, end, start, events)
        if off < end:
            self._pending = data[off:]
            self._pending_at = start + off
        return events

    def finish(self) -> None:
        """Declare the input complete; raises NarFormatError when the NAR is not."""
        if self._fed == 0:
            raise NarFormatError("the NAR is empty (no bytes at all)")
        if self._state != _DONE:
            raise NarFormatError(
                f"the NAR is truncated: it ends after {self._fed} bytes, "
                f"{self._describe_expected()}{self._where()}"
            )

    # --- internals ---

    def _complete_pending(self, data: bytes, events: list[NarEvent]) -> int:
        """Top up the carried-over item from `data`; parse it once whole. Returns bytes taken.

        Only the bytes the item needs are copied, so a big chunk after a small leftover is not.
        """
        pending = self._pending
        off = 0
        while True:
            need = self._item_size(pending, 0, len(pending), self._pending_at)
            if need is not None and len(pending) >= need:
                break
            take = data[off : off + (need or 8) - len(pending)]
            if not take:
                self._pending = pending
                return off
            pending += take
            off += len(take)
        self._pending = b""
        self._parse(pending, 0, len(pending), self._pending_at, events)
        return off

    def _item_size(self, data: bytes, off: int, end: int, base: int) -> int | None:
        """Bytes the next item takes, or None while its length prefix is incomplete."""
        state = self._state
        if state == _SIZE:
            return 8
        if state == _PAD:
            return self._pad
        if end - off < 8:
            return None
        (length,) = _U64.unpack_from(data, off)
        limit = _string_limit(state)
        if length > limit:
            if state == _MAGIC:
                raise NarFormatError("not a NAR: it does not start with nix-archive-1")
            raise NarFormatError(
                f"{self._describe_expected()}, found a string of {length} bytes "
                f"(at most {limit} allowed) at offset {base + off}{self._where()}"
            )
        return 8 + length + (-length & 7)

    def _parse(self, data: bytes, off: int, end: int, base: int, events: list[NarEvent]) -> int:
        """Parse whole items from data[off:end]; return the offset of the first one left.

        `base` is the NAR offset of data[0], for error messages. The common fixed tokens are
        matched whole (length, text and padding at once) with `startswith`; everything else,
        including every error, goes through the general string path.
        """
        view: memoryview | None = None
        while off < end:
            state = self._state
            if state == _DATA:
                if view is None:
                    view = memoryview(data)
                n = min(self._remaining, end - off)
                events.append(FileData(view[off : off + n]))
                off += n
                self._remaining -= n
                if not self._remaining:
                    events.append(FileEnd())
                    self._state = _PAD if self._pad else _NODE_CLOSE
                continue
            fast = _FAST_TOKENS.get(state)
            if fast is not None and data.startswith(fast[0], off):
                off += len(fast[0])
                if fast[1] == _NODE_CLOSE:
                    self._end_node()
                else:
                    self._state = fast[1]
                continue
            if state == _DONE:
                raise NarFormatError(
                    f"trailing garbage: {end - off} bytes or more follow the end of the NAR "
                    f"at offset {base + off}"
                )
            need = self._item_size(data, off, end, base)
            if need is None or end - off < need:
                break
            if state == _SIZE:
                self._start_file(_U64.unpack_from(data, off)[0], events)
            elif state == _PAD:
                if data[off : off + need] != _ZEROS[need]:
                    raise NarFormatError(
                        f"non-zero padding after file contents at offset {base + off}"
                        f"{self._where()}"
                    )
                self._state = _NODE_CLOSE
            else:
                stop = off + 8 + _U64.unpack_from(data, off)[0]
                if data[stop : off + need] != _ZEROS[off + need - stop]:
                    raise NarFormatError(
                        f"non-zero padding after a string at offset {base + off}{self._where()}"
                    )
                self._on_string(data[off + 8 : stop], base + off, events)
            off += need
        return off

    def _on_string(self, value: bytes, at: int, events: list[NarEvent]) -> None:
        """Advance the grammar by one string item."""
        state = self._state
        expected = _EXPECTED.get(state)
        if expected is not None:
            if value != expected:
                self._unexpected(value, at)
            if state == _MAGIC:
                self._state = _NODE_OPEN
            elif state == _NODE_CLOSE:
                self._end_node()
            elif state == _ENTRY_CLOSE:
                self._state = _DIRECTORY
            else:
                self._state = _NEXT[state]
            return
        if state == _TYPE:
            if value == b"regular":
                self._state = _REGULAR
            elif value == b"symlink":
                self._state = _TARGET_KEYWORD
            elif value == b"directory":
                if len(self._dirs) >= MAX_DEPTH:
                    raise NarFormatError(
                        f"directories nest deeper than {MAX_DEPTH} levels at offset {at}"
                        f"{self._where()}"
                    )
                events.append(DirectoryStart(self._name))
                self._dirs.append(None)
                self._state = _DIRECTORY
            else:
                raise NarFormatError(
                    f"unknown node type {_show(value)} at offset {at}{self._where()}"
                )
        elif state == _REGULAR:
            if value == b"executable":
                self._executable = True
                self._state = _EXECUTABLE
            elif value == b"contents":
                self._state = _SIZE
            else:
                self._unexpected(value, at)
        elif state == _TARGET:
            if not value:
                raise NarFormatError(f"empty symlink target at offset {at}{self._where()}")
            if b"\0" in value:
                raise NarFormatError(
                    f"symlink target contains a NUL byte at offset {at}{self._where()}"
                )
            events.append(Symlink(self._name, value))
            self._state = _NODE_CLOSE
        elif state == _DIRECTORY:
            if value == b"entry":
                self._state = _ENTRY_OPEN
            elif value == b")":
                self._dirs.pop()
                events.append(DirectoryEnd())
                self._end_node()
            else:
                self._unexpected(value, at)
        elif state == _NAME:
            self._check_name(value, at)
            self._dirs[-1] = value
            self._name = value
            self._state = _NODE_KEYWORD
        else:  # pragma: no cover - every string state is handled above
            raise AssertionError(f"parser in state {state} got a string")

    def _start_file(self, size: int, events: list[NarEvent]) -> None:
        if size > self._max_size:
            raise NarFormatError(
                f"a file of {size} bytes exceeds the NAR size limit of {self._max_size} bytes"
                f"{self._where()}"
            )
        events.append(FileStart(self._name, self._executable, size))
        self._executable = False
        self._remaining = size
        self._pad = -size & 7
        if size:
            self._state = _DATA
        else:
            events.append(FileEnd())
            self._state = _NODE_CLOSE

    def _end_node(self) -> None:
        self._state = _ENTRY_CLOSE if self._dirs else _DONE

    def _check_name(self, name: bytes, at: int) -> None:
        """Names that could escape or collide are refused here (the restorer checks again)."""
        if not name:
            problem = "an empty entry name"
        elif name in (b".", b".."):
            problem = f"the entry name {_show(name)}"
        elif b"/" in name:
            problem = f"an entry name containing '/': {_show(name)}"
        elif b"\0" in name:
            problem = f"an entry name containing a NUL byte: {_show(name)}"
        else:
            previous = self._dirs[-1]
            if previous is None or name > previous:
                return
            if name == previous:
                problem = f"a duplicate entry {_show(name)}"
            else:
                problem = f"entry {_show(name)} after {_show(previous)} (not in byte order)"
        raise NarFormatError(f"{problem} at offset {at}{self._where(include_current=False)}")

    def _unexpected(self, value: bytes, at: int) -> None:
        if self._state == _NODE_CLOSE and value == b"executable":
            raise NarFormatError(
                f"unexpected executable file marker after the contents at offset {at}"
                f"{self._where()}"
            )
        if self._state == _MAGIC:
            raise NarFormatError(f"not a NAR: bad magic {_show(value)} (expected nix-archive-1)")
        raise NarFormatError(
            f"{self._describe_expected()}, found {_show(value)} at offset {at}{self._where()}"
        )

    def _describe_expected(self) -> str:
        state = self._state
        if state in _EXPECTED:
            return f"expected {_show(_EXPECTED[state])}"
        return {
            _TYPE: "expected a node type (regular, symlink or directory)",
            _REGULAR: 'expected "executable" or "contents"',
            _SIZE: "expected the file size",
            _DATA: f"expected {self._remaining} more bytes of file contents",
            _PAD: "expected the padding after file contents",
            _TARGET: "expected a symlink target",
            _DIRECTORY: 'expected "entry" or ")"',
            _NAME: "expected an entry name",
            _DONE: "expected nothing more",
        }[state]

    def _where(self, *, include_current: bool = True) -> str:
        names = [n for n in self._dirs if n is not None]
        if not include_current and self._dirs and self._dirs[-1] is not None:
            names.pop()
        if not names:
            return ""
        return f" (in {_show(b'/'.join(names))})"


def _show(value: bytes) -> str:
    """A token or name for an error message: printable, and short even when the input is not."""
    text = value[:64].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(value) > 64 else ""))


# --- restorer ---

_ROOT = "nar"  # name of the root node inside the temporary directory
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Store items carry this timestamp (spec section 4); a NAR has none of its own to restore.
_MTIME = (1, 1)


class NarRestorer:
    """Restore a NAR fed chunk by chunk into `dest`, which must not exist yet.

    Use as a context manager (an exception inside the block aborts and removes everything),
    call `feed` for each chunk and `finish` at the end. `feed` does blocking file I/O; async
    code runs it in a thread. With `expected`, the NAR must have that hash and size before the
    tree is moved into place, and a longer stream is cut off at that size.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        max_size: int = DEFAULT_MAX_NAR_SIZE,
        expected: NarSummary | None = None,
    ) -> None:
        dest = os.path.abspath(os.fspath(dest))
        parent, base = os.path.split(dest)
        if not base:
            raise NarRestoreError(f"cannot restore a NAR onto {dest}")
        self._dest = dest
        self._base = base
        self._expected = expected
        if expected is not None:
            max_size = min(max_size, expected.size)
        self._parser = NarParser(max_size=max_size)
        self._hasher = NarHasher()
        self._dirs: list[int] = []  # descriptors of the open directories, innermost last
        self._root_fd = -1  # the root directory, kept to set its mode after the move
        self._file_fd = -1
        self._file_mode = 0o444
        self._finished = False
        self._temp_fd = -1
        self._temp_name = ""
        self._parent_fd = -1
        try:
            # The caller chose this path, so symlinks in it are followed; the NAR's are not.
            self._parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise NarRestoreError(f"cannot restore into {parent}: {exc.strerror}") from exc
        try:
            self._check_dest_free()
            self._temp_name = _make_temp_dir(self._parent_fd, base)
            self._temp_fd = os.open(self._temp_name, _OPEN_DIR, dir_fd=self._parent_fd)
        except OSError as exc:
            self.abort()
            raise NarRestoreError(f"cannot restore into {parent}: {exc.strerror}") from exc
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> NarRestorer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._finished:
            self.abort()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse the next chunk of the NAR and write what it completes."""
        self._hasher.update(data)
        try:
            for event in self._parser.feed(data):
                self._apply(event)
        except OSError as exc:
            raise self._os_error(exc) from exc

    def finish(self) -> NarSummary:
        """Check that the NAR is complete (and as expected), then move the tree to `dest`."""
        self._parser.finish()
        summary = self._hasher.summary()
        expected = self._expected
        if expected is not None and summary != expected:
            raise NarRestoreError(
                f"the NAR for {self._dest} is not the one expected: got {summary.nar_hash} "
                f"({summary.size} bytes), expected {expected.nar_hash} ({expected.size} bytes)"
            )
        try:
            self._publish()
        except OSError as exc:
            raise self._os_error(exc) from exc
        self._finished = True
        self._close_all()
        return summary

    def abort(self) -> None:
        """Stop and remove everything written so far. Safe to call more than once."""
        self._finished = True
        self._close_all()
        if self._temp_name:
            _remove_tree(self._parent_fd, self._temp_name)
            self._temp_name = ""
        if self._parent_fd >= 0:
            os.close(self._parent_fd)
            self._parent_fd = -1

    # --- internals ---

    def _check_dest_free(self) -> None:
        try:
            os.stat(self._base, dir_fd=self._parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise NarRestoreError(
            f"{self._dest} already exists; restoring a NAR never replaces anything"
        )

    def _apply(self, event: NarEvent) -> None:
        """Write one event. Everything is created relative to a directory descriptor."""
        if type(event) is FileData:
            data = event.data
            while data:
                data = data[os.write(self._file_fd, data) :]
        elif type(event) is FileStart:
            self._file_fd = os.open(self._target(event.name), _CREATE_FILE, 0o600, **self._at())
            self._file_mode = 0o555 if event.executable else 0o444
        elif type(event) is FileEnd:
            fd, self._file_fd = self._file_fd, -1
            try:
                os.fchmod(fd, self._file_mode)
                os.utime(fd, _MTIME)
            finally:
                os.close(fd)
        elif type(event) is DirectoryStart:
            at = self._at()
            name = self._target(event.name)
            os.mkdir(name, 0o700, **at)
            fd = os.open(name, _OPEN_DIR, **at)
            self._dirs.append(fd)
            if event.name is None:
                self._root_fd = fd
        elif type(event) is DirectoryEnd:
            fd = self._dirs.pop()
            if fd != self._root_fd:  # the root stays writable until it has been moved
                try:
                    os.fchmod(fd, 0o555)
                    os.utime(fd, _MTIME)
                finally:
                    os.close(fd)
        elif type(event) is Symlink:
            name = self._target(event.name)
            os.symlink(event.target, name, **self._at())
            os.utime(name, _MTIME, follow_symlinks=False, **self._at())
        else:  # pragma: no cover
            raise AssertionError(f"unknown NAR event {event!r}")

    def _target(self, name: bytes | None) -> str | bytes:
        if name is None:
            return _ROOT
        # Second line of defence behind the parser: one plain name, never a path.
        if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
            raise NarFormatError(f"refusing to create an entry named {_show(name)}")
        return name

    def _at(self) -> dict[str, int]:
        return {"dir_fd": self._dirs[-1] if self._dirs else self._temp_fd}

    def _publish(self) -> None:
        """Move the finished root to `dest` without replacing anything, then seal it."""
        self._check_dest_free()
        if self._root_fd >= 0:
            # rename() would replace an empty directory created meanwhile at dest; the check
            # above makes that window small, and nothing but an empty directory can be lost.
            os.rename(_ROOT, self._base, src_dir_fd=self._temp_fd, dst_dir_fd=self._parent_fd)
            os.fchmod(self._root_fd, 0o555)
            os.utime(self._root_fd, _MTIME)
        else:
            # link() fails if dest exists: a file or symlink root is published atomically.
            try:
                os.link(
                    _ROOT,
                    self._base,
                    src_dir_fd=self._temp_fd,
                    dst_dir_fd=self._parent_fd,
                    follow_symlinks=False,
                )
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
                    raise
                # a filesystem without hard links: same small window as for directories
                os.rename(_ROOT, self._base, src_dir_fd=self._temp_fd, dst_dir_fd=self._parent_fd)
        _remove_tree(self._parent_fd, self._temp_name)
        self._temp_name = ""

    def _close_all(self) -> None:
        fds = [self._file_fd, *self._dirs, self._temp_fd]
        if self._root_fd not in self._dirs:
            fds.append(self._root_fd)
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        self._file_fd = self._root_fd = self._temp_fd = -1
        self._dirs = []

    def _os_error(self, exc: OSError) -> NarRestoreError:
        return NarRestoreError(f"cannot restore the NAR into {self._dest}: {exc}")


def restore_nar(
    source: BinaryIO | Iterable[bytes],
    dest: str | os.PathLike[str],
    *,
    max_size: int = DEFAULT_MAX_NAR_SIZE,
    expected: NarSummary | None = None,
    read_size: int = DEFAULT_READ_SIZE,
) -> NarSummary:
    """Restore the NAR read from `source` (a binary file or an iterable of chunks) to `dest`.

    `dest` must not exist; it appears only once the whole NAR has been read and checked. Files
    become 0444 (0555 when executable), directories 0555, timestamps 1, as Guix restores them.
    Returns the hash and size of the bytes read. Raises NarFormatError for a malformed NAR and
    NarRestoreError when the tree cannot be written or is not `expected`; either way nothing
    is left behind.
    """
    with NarRestorer(dest, max_size=max_size, expected=expected) as restorer:
        for chunk in _chunks(source, read_size):
            restorer.feed(chunk)
        return restorer.finish()


def _chunks(source: BinaryIO | Iterable[bytes], read_size: int) -> Iterable[bytes]:
    read = getattr(source, "read", None)
    if read is None:
        yield from source  # type: ignore[misc]
        return
    while chunk := read(read_size):
        yield chunk


def _make_temp_dir(parent_fd: int, base: str) -> str:
    """Create a new private directory beside `base`, named after it so a leftover is clear."""
    for _ in range(100):
        name = f".{base[:64]}.restoring-{secrets.token_hex(6)}"
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free temporary name beside {base}")


def _remove_tree(parent_fd: int, name: str | bytes) -> None:
    """Delete `name` under `parent_fd` recursively, read-only directories included.

    Works on descriptors and never follows symlinks. Each directory is made writable before
    its entries are removed (unlinking needs write permission on the directory itself).
    """
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    try:
        os.fchmod(fd, 0o700)
        for child in os.listdir(fd):
            _remove_tree(fd, os.fsencode(child))
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
