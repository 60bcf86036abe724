"""Where archived ledger months live: a local directory or any S3-compatible bucket.

A store is named by one URL (`RECKON_LEDGER_ARCHIVE_URL`): `file:///var/lib/reckon/archive`
or `s3://bucket/prefix`, plus, for S3-compatible stores other than AWS, an endpoint URL
(`RECKON_LEDGER_ARCHIVE_ENDPOINT_URL`). Credentials never appear in either: boto3 takes
them from its own environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, an instance
role), so no setting, log line, admin page or manifest can show them. A URL (archive or
endpoint) that carries a user or password is refused. Every failure of the store itself
(missing file, no credentials, unreachable endpoint, failed upload) is an
ArchiveStoreError naming the object and the error's type, never a traceback.

Objects are whole files written once: a local write goes to a temporary name and is
renamed into place (a crash never leaves half a file under the real name); S3 uploads are
atomic per object. Writing a name again replaces it (a re-export overwrites).
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError

from config.errors import ApplicationError


class ArchiveStoreError(ApplicationError):
    """The archive location is missing, malformed, or could not be read or written."""


class ArchiveStore(Protocol):
    location: str  # the URL the store was opened with (no credentials: they are refused)

    def put_file(self, *, name: str, path: Path) -> None: ...

    def get_file(self, *, name: str, path: Path) -> None: ...

    def exists(self, *, name: str) -> bool: ...

    def local_path(self, *, name: str, workdir: Path) -> Any:
        """A context manager yielding a local path holding the object `name`: the file
        itself for a directory store, a download into `workdir` (removed on exit) for
        S3, so a reader holds one object on disk at a time."""
        ...


@dataclass
class FileStore:
    location: str
    root: Path

    def put_file(self, *, name: str, path: Path) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_file(self, *, name: str, path: Path) -> None:
        source = self.root / name
        if not source.is_file():
            raise ArchiveStoreError(f"Archive file {name} is missing from {self.location}.")
        shutil.copyfile(source, path)

    def exists(self, *, name: str) -> bool:
        return (self.root / name).is_file()

    @contextmanager
    def local_path(self, *, name: str, workdir: Path) -> Iterator[Path]:
        source = self.root / name
        if not source.is_file():
            raise ArchiveStoreError(f"Archive file {name} is missing from {self.location}.")
        yield source


@dataclass
class S3Store:
    location: str
    bucket: str
    prefix: str
    client: Any

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put_file(self, *, name: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(name))
        except (Boto3Error, BotoCoreError, ClientError) as error:
            raise ArchiveStoreError(
                f"Archive file {name} could not be written to {self.location}"
                f" ({type(error).__name__})."
            ) from error

    def get_file(self, *, name: str, path: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(name), str(path))
        except (Boto3Error, BotoCoreError, ClientError) as error:
            raise ArchiveStoreError(
                f"Archive file {name} could not be read from {self.location}"
                f" ({type(error).__name__})."
            ) from error

    def exists(self, *, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError:
            return False
        except (Boto3Error, BotoCoreError) as error:
            raise ArchiveStoreError(
                f"{self.location} could not be reached ({type(error).__name__})."
            ) from error
        return True

    @contextmanager
    def local_path(self, *, name: str, workdir: Path) -> Iterator[Path]:
        path = workdir / name.replace("/", "_")
        self.get_file(name=name, path=path)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)


def archive_store_open(*, url: str, endpoint_url: str = "") -> ArchiveStore:
    """The store a URL names (see the module docstring); ArchiveStoreError otherwise."""
    if not url:
        raise ArchiveStoreError(
            "No archive location: set RECKON_LEDGER_ARCHIVE_URL (file:///dir or s3://bucket/prefix)."
        )
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ArchiveStoreError(
            "The archive URL must not carry credentials; S3 credentials come from the environment."
        )
    endpoint = urlsplit(endpoint_url) if endpoint_url else None
    if endpoint is not None and (endpoint.username or endpoint.password):
        raise ArchiveStoreError(
            "The archive endpoint URL must not carry credentials; S3 credentials come from"
            " the environment."
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ArchiveStoreError("A file archive URL names an absolute path: file:///dir.")
        return FileStore(location=url, root=Path(parts.path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ArchiveStoreError("An S3 archive URL names a bucket: s3://bucket/prefix.")
        client = boto3.client("s3", endpoint_url=endpoint_url or None)
        return S3Store(
            location=url, bucket=parts.netloc, prefix=parts.path.strip("/"), client=client
        )
    raise ArchiveStoreError("The archive URL must start with file:// or s3://.")
