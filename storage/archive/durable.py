"""Where a file becomes durable.

Every object enters the archive the same way: its bytes are streamed into a
temporary file inside the archive (same file system, so the final rename is
atomic), hashed while they are written, fsynced, renamed into place and the
folder fsynced. Until the rename nothing is visible under the archive's object
tree, so a crash at any moment leaves either nothing or a complete file.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".part"
# A sink's writes reach the kernel as they arrive (a PDV is up to a PDU, 16-64 kB), small ones
# (the preamble, a STOW part's pieces) gathered first: copying an object into the page cache
# costs ~1.5 ms per MB here, and spent while the next PDU is on its way it is off a store's
# critical path; a 1 MB buffer had held a whole CT image until the seal.
_BUFFER = 1 << 16


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename or a new file is only durable once its folder is)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path) -> None:
    """Create `path` and any missing parents, fsyncing each parent that gained an entry."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def place(tmp: Path, final: Path) -> None:
    """Atomically move a fsynced temp file to its final name and make the rename durable."""
    make_dirs_durable(final.parent)
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_file(dst: Path, mode: int = 0o666) -> Iterator[Path]:
    """A temp path beside `dst` to write; on a clean exit it becomes `dst`, durably.

    Every file the node makes outside the object tree (conversions, copies,
    de-identified files, keys) goes through here: a reader sees the old file
    or the complete new one, and once the block is left the new one survives
    a power cut (file fsynced, renamed, folder fsynced). On an exception the
    temp file is removed and `dst` is untouched. `mode` is applied as open()
    applies it (minus the umask), e.g. 0o600 for a key.
    """
    make_dirs_durable(dst.parent)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def copy_file(src: Path, dst: Path) -> None:
    """Copy durably and atomically (see atomic_file)."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place_new(tmp: Path, dst: Path) -> Path:
    """Move a fsynced temp file to `dst`, or, when that exists, to dst-2, dst-3, ...; never replace a file.

    A hard link claims the name atomically (two writers cannot both get it);
    where links are not supported, an exclusively created placeholder does.
    Returns the name the file got, durable on return.
    """
    make_dirs_durable(dst.parent)
    n = 1
    while True:
        final = dst if n == 1 else dst.with_name(f"{dst.stem}-{n}{dst.suffix}")
        try:
            _claim(tmp, final)
        except FileExistsError:
            n += 1
            continue
        fsync_dir(final.parent)
        return final


def _claim(tmp: Path, final: Path) -> None:
    """Give `tmp` the name `final` unless that exists (FileExistsError)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: claim the name, then fill it
        os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def write_files(tmp_dir: Path, files: list[tuple[Path, bytes]]) -> None:
    """Replace each file atomically (a reader sees the old or the new one), all durable on return.

    One fsync per file and one per folder for the whole batch, not per file:
    derived files are written in batches beside objects that share folders.
    """
    folders: set[Path] = set()
    for final, data in files:
        fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=TMP_SUFFIX, dir=tmp_dir)
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            make_dirs_durable(final.parent)
            os.replace(name, final)
        except BaseException:
            try:
                os.unlink(name)
            except OSError:
                pass
            raise
        folders.add(final.parent)
    for d in folders:
        fsync_dir(d)


def remove(path: Path) -> bool:
    """Remove a file and persist the removal; False when it was already gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def _discard(fileobj: object, name: str) -> None:
    """Finalizer of an abandoned sink (aborted association): drop the partial file."""
    try:
        fileobj.close()  # type: ignore[attr-defined]
    except OSError:
        pass
    try:
        os.unlink(name)
    except OSError:
        pass


class HashingSink:
    """A temp file in the archive that hashes what is written as it is written.

    Hashing while streaming means a stored object is never read a second time
    for its content hash. Write errors (ENOSPC, EIO) are recorded rather than
    raised: raised inside pynetdicom's PDU decoding they would abort the
    association, whereas recorded they let the C-STORE handler answer with
    0xA700 (Out of Resources) and keep the association alive.

    The object also satisfies what pynetdicom expects of the NamedTemporaryFile
    it normally creates (``write``, ``file.flush``, ``name``, ``close``).
    """

    def __init__(self, tmp_dir: Path) -> None:
        fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=TMP_SUFFIX, dir=tmp_dir)
        self.name = name
        self.path = Path(name)
        self._f = open(fd, "wb", buffering=_BUFFER)
        self._hash = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None
        self._sync: Future[None] | None = None
        self._written_back = 0  # bytes handed to the kernel's writeback so far (_write_back)
        self._writer: _Writer | None = None  # a large object's writes and hashing, off the receiving thread
        self._finalizer = weakref.finalize(self, _discard, self._f, name)

    @property
    def file(self) -> HashingSink:
        return self

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        self.size += n
        if self._writer is not None:
            self._writer.put(data)
        elif self.error is None:
            self._put(data)
            if self.size >= PIPELINE_AT:
                self._writer = _Writer(self)
        return n

    def _put(self, data: bytes | memoryview) -> None:
        """Write and hash (on the receiving thread, or on a large object's _Writer)."""
        try:
            self._f.write(data)
            self._hash.update(data)
        except OSError as exc:
            self.error = exc
        if self.size - self._written_back >= WRITE_BACK:
            self._write_back()

    def _drain(self) -> None:
        """Wait until a _Writer has written everything (and stop it)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.finish()

    def _write_back(self) -> None:
        """Have the kernel start writing what has arrived so far (sync_file_range, without waiting):
        left to the seal's fsync, a 1 GB object's every byte went to the disk only then, ~1.5 s of
        waiting after its last byte had arrived."""
        try:
            self._f.flush()
        except OSError as exc:
            self.error = exc
            return
        written = self._f.tell()  # on a _Writer's thread, self.size runs ahead of what is written
        start, self._written_back = self._written_back, written
        _start_writeback(self._f.fileno(), start, written - start)

    def flush(self) -> None:
        """No-op: pynetdicom flushes after every PDV; buffering is ours to decide."""

    @property
    def sha256(self) -> str:
        self._drain()
        return self._hash.hexdigest()

    def seal(self) -> None:
        """Flush and fsync; afterwards the bytes are on disk (raises OSError on failure)."""
        self.start_seal()
        self.sealed()

    def start_seal(self) -> None:
        """Flush, and start the fsync on another thread (raises OSError on failure): the caller
        parses the header meanwhile, and calls sealed() before the file may go anywhere.

        An fsync waits ~0.5-1.5 ms for the disk, about what parsing and checking a header
        costs; side by side, a store over one association takes that much less.
        """
        self._drain()
        if self.error is not None:
            raise self.error
        try:
            self._f.flush()
        except OSError as exc:
            self.error = exc
            raise
        self._sync = _syncs().submit(os.fsync, self._f.fileno())

    def sealed(self) -> None:
        """Wait for start_seal's fsync; afterwards the bytes are on disk (raises OSError on failure)."""
        sync, self._sync = self._sync, None
        if sync is None:
            if self.error is not None:
                raise self.error
            return
        try:
            sync.result()
        except OSError as exc:
            self.error = exc
            raise
        finally:
            self.close()

    def _settle(self) -> None:
        """Let a running fsync end before the file is closed (its descriptor must not be reused under it)."""
        try:
            self.sealed()
        except OSError:
            pass

    def close(self) -> None:
        self._drain()
        if not self._f.closed:
            try:
                self._f.close()
            except OSError as exc:
                self.error = self.error or exc

    def kept(self) -> None:
        """The file was renamed into the archive: nothing left to clean up."""
        self._settle()
        self.close()
        self._finalizer.detach()

    def discard(self) -> None:
        self._drain()
        self._settle()
        self._finalizer()


WRITE_BACK = 8 << 20  # a large object's bytes are handed to writeback every 8 MB
# From this size on, an object's writes and hashing run on a thread of their own (_Writer).
PIPELINE_AT = 8 << 20
_QUEUED = 4 << 20  # bytes a _Writer may hold before the receiving thread waits for it


class _Writer:
    """A large object's file writes and hashing, on their own thread, fed by the receiving thread.

    Received alone, a 1 GB object cost its receiving thread ~1 s of copying into the page cache
    and ~0.75 s of SHA-256 after the socket reads, one after the other; with the two on another
    thread (both release the GIL) they run beside the reads. What waits is bounded by _QUEUED
    bytes: a sender faster than the disk is slowed down, memory does not grow. Data the caller
    could change after write() returns is copied first; read-only views (quick_pdata's PDU
    bodies, which are never reused) and bytes are kept as they are.
    """

    def __init__(self, sink: HashingSink) -> None:
        # weak: a sink dropped without close() or discard() (its finalizer removes the file) ends the thread
        self._sink = weakref.ref(sink)
        self._items: deque[bytes | memoryview | None] = deque()
        self._held = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sink-writer", daemon=True)
        self._thread.start()

    def put(self, data: bytes | memoryview | None) -> None:
        if data is not None and not (isinstance(data, bytes) or isinstance(data, memoryview) and data.readonly):
            data = bytes(data)
        n = len(data) if data is not None else 0
        with self._cond:
            while self._held and self._held + n > _QUEUED:
                self._cond.wait()
            self._items.append(data)
            self._held += n
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    if not self._cond.wait(1.0) and self._sink() is None:
                        return
                data = self._items.popleft()
            if data is None:
                return
            sink = self._sink()
            if sink is not None and sink.error is None:
                sink._put(data)
            del sink
            with self._cond:
                self._held -= len(data)
                self._cond.notify_all()

    def finish(self) -> None:
        """Write what is queued, then end the thread."""
        self.put(None)
        self._thread.join()


@cache
def _sync_file_range() -> Any:
    """Linux's sync_file_range(2), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file to disk without waiting (an advice: errors are the fsync's to find)."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


@cache
def _syncs() -> ThreadPoolExecutor:
    """The threads that fsync sealed sinks (started as needed; each waits on the disk, not the CPU)."""
    return ThreadPoolExecutor(max_workers=64, thread_name_prefix="fsync")


def is_out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def clean_stale_temp(tmp_dir: Path) -> int:
    """Remove temp files left by processes that are gone (a crash mid-receive)."""
    removed = 0
    for p in tmp_dir.glob(f"*{TMP_SUFFIX}"):
        pid_text = p.name.split("-", 1)[0]
        if pid_text.isdigit() and pid_alive(int(pid_text)):
            continue
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
