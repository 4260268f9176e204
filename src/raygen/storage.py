"""Where data, runs and models live: a local path or a URI (`s3://`, `gs://`, `hdfs://`, any pyarrow filesystem).

On a cluster every node must see them, so they live in object storage; on one machine a directory will do.
`Location` is the one handle for both: a pyarrow filesystem and a path in it, with the few file operations
raygen needs. Credentials and endpoints come from the usual environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS...) or the URI's query (`?endpoint_override=...`), as
pyarrow reads them, so Ray Data, Ray Train and raygen agree on every node.

Object storage has no rename and no symlink, so nothing here relies on them: a write is one object (whole
or absent), and whoever needs a commit point writes a marker last (the registry's card, the data job's
runs.json). On a local disk writes go through a temporary file and `os.replace`, so they are atomic too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from functools import cached_property
from pathlib import Path

from raygen.errors import StorageError


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


class Location:
    """A file or directory in a pyarrow filesystem; `str()` gives back the URI (or the local path)."""

    def __init__(self, where: str | os.PathLike | Location):
        if isinstance(where, Location):
            self.uri = where.uri
        else:
            s = str(where)
            self.uri = s.rstrip("/") if is_uri(s) else str(Path(s.removeprefix("file://")).expanduser().absolute())

    @cached_property
    def _fs_path(self):
        import pyarrow.fs as pafs

        if not self.is_local:
            try:
                return pafs.FileSystem.from_uri(self.uri)
            except Exception as exc:  # pyarrow: unknown scheme, a bucket name it cannot parse, no credentials
                raise StorageError(f"cannot open {self.uri}: {exc}") from exc
        return pafs.LocalFileSystem(), self.uri

    @property
    def fs(self):
        """The pyarrow filesystem: give it to Ray Data (`filesystem=`) and Ray Train (`storage_filesystem=`)."""
        return self._fs_path[0]

    @property
    def path(self) -> str:
        """The path inside `fs` (for a URI: bucket/key, without the scheme)."""
        return self._fs_path[1]

    @property
    def is_local(self) -> bool:
        return not is_uri(self.uri)

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise StorageError(f"{self.uri} is not on a local disk")
        return Path(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, part: str) -> Location:
        return Location(f"{self.uri}/{part}")

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """A local Location is a path (open(), Path(), from_pretrained() take it); a remote one raises."""
        return str(self.local_path)

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    # -- what is there ----------------------------------------------------------------------------------
    def _type(self):
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() == pafs.FileType.Directory

    def iterdir(self) -> list[Location]:
        """The entries directly inside, sorted by name ([] when the directory does not exist)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((self / i.base_name for i in infos), key=lambda loc: loc.name)

    def files(self) -> list[tuple[str, int]]:
        """Every file below, as (path relative to here, size), sorted."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        base = self.path.rstrip("/") + "/"
        return sorted((i.path.removeprefix(base), i.size) for i in infos if i.type == pafs.FileType.File)

    # -- reading and writing ------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri} does not exist") from exc

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Atomic: readers see the old content or the new, never a part."""
        if self.is_local:
            p = self.local_path
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, p)
            return
        with self.fs.open_output_stream(self.path) as f:  # one PUT: S3 and GCS publish an object whole
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        """Remove a file or a whole directory; nothing when absent."""
        t = self._type()
        import pyarrow.fs as pafs

        if t == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif t == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def upload(self, local_dir: str | os.PathLike) -> None:
        """Copy a local directory's files here (the directory itself, recursively)."""
        import pyarrow.fs as pafs

        if self.is_local:
            shutil.copytree(local_dir, self.local_path, dirs_exist_ok=True)
            return
        pafs.copy_files(str(Path(local_dir).absolute()), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def download(self, local_dir: str | os.PathLike) -> Path:
        """Copy this directory's files into local_dir (created); returns it."""
        import pyarrow.fs as pafs

        dst = Path(local_dir)
        dst.mkdir(parents=True, exist_ok=True)
        if not self.is_dir():
            raise StorageError(f"{self.uri} is not a directory")
        pafs.copy_files(self.path, str(dst.absolute()), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return dst


def cache_dir() -> Path:
    """Local copies of remote, immutable things (registry versions): $RAYGEN_CACHE or ~/.cache/raygen."""
    return Path(os.environ.get("RAYGEN_CACHE") or Path.home() / ".cache" / "raygen")


def cached_path(where: str | Location) -> Path:
    """Where local_copy keeps a remote directory on this node."""
    loc = Location(where)
    return cache_dir() / "remote" / f"{loc.name}-{hashlib.blake2b(loc.uri.encode(), digest_size=8).hexdigest()}"


def local_copy(where: str | os.PathLike | Location, marker: str) -> Path:
    """A local directory with the content of `where`: itself when local, else a cached download. Only for
    content that never changes once `marker` (a file written last) exists in it, such as a registry version:
    the cache is keyed by URI. Concurrent callers (replicas on one node) each download to their own temporary
    directory and the first rename wins."""
    loc = Location(where)
    if loc.is_local:
        return loc.local_path
    dst = cached_path(loc)
    if (dst / marker).is_file():
        return dst
    if not (loc / marker).is_file():
        raise StorageError(f"{loc} is incomplete or missing ({marker} absent)")
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}")
    loc.download(tmp)
    try:
        os.replace(tmp, dst)
    except OSError:  # another process got there first (its copy is the same content)
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
