"""Where an experiment lives: a folder on this machine, or a URI every node of a cluster reaches.

On several machines Ray no longer syncs trial folders to the head (Ray 2.60): ``--storage-path``
must be storage every node reaches, an NFS folder mounted at the same path everywhere or an
object store (``s3://bucket/path``, ``gs://bucket/path``, or anything
``pyarrow.fs.FileSystem.from_uri`` takes; credentials come from the usual environment variables).

`location` turns what the user typed into a `pathlib.Path` (a local folder or a ``file://`` URI:
everything works on it exactly as on any folder) or a `StoragePath`, a small pathlib-like view of
one path on a pyarrow filesystem with the few operations the harness uses. The readers
(`tuner.ray_files`, `tuner.settings`, `tuner.results`) and writers (exports, pictures,
``end_reason.json``) take either and write through `write_bytes_atomic`. Pure: pyarrow, no Ray, no torch.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Union
from urllib.parse import urlsplit

from reid_core import io as local_io
from reid_core.errors import UserError

PROBE_TIMEOUT_S = 5.0  # a PUT and a DELETE take well under a second; an unreachable endpoint retries for minutes
OBJECT_STORES = ("s3", "gcs")  # pyarrow's type_name of filesystems where one PUT is atomic


class StoragePath:
    """One path on a pyarrow filesystem, named by its URI (query kept: it carries e.g. ``endpoint_override``)."""

    def __init__(self, fs: Any, path: str, uri: str):
        self.fs = fs  # pyarrow.fs.FileSystem
        self.path = path.rstrip("/")  # on fs, e.g. 'bucket/exp/trial' (pyarrow's prefix-stripped form)
        self._uri = uri  # e.g. 's3://bucket/exp/trial?endpoint_override=host:9000'

    def __str__(self) -> str:
        return self._uri

    def __repr__(self) -> str:
        return f"StoragePath({self._uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoragePath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(self._uri)

    def __lt__(self, other: "StoragePath") -> bool:  # sorted() as pathlib sorts: folder by folder
        return self.path.split("/") < other.path.split("/")

    def _with_path(self, path: str) -> "StoragePath":
        parts = urlsplit(self._uri)
        # s3://bucket/key is 'bucket/key' on its filesystem; hdfs://host:port/dir is '/dir'
        where = f"{parts.netloc}{path}" if path.startswith("/") else path
        return StoragePath(self.fs, path, f"{parts.scheme}://{where}" + (f"?{parts.query}" if parts.query else ""))

    def __truediv__(self, name: str) -> "StoragePath":
        return self._with_path(posixpath.join(self.path, str(name)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> "StoragePath":
        return self._with_path(posixpath.dirname(self.path))

    def resolve(self) -> "StoragePath":
        return self

    def expanduser(self) -> "StoragePath":
        return self

    # --- reading -------------------------------------------------------------------------------

    def _type(self):
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path).type, pafs.FileType

    def exists(self) -> bool:
        kind, types = self._type()
        return kind != types.NotFound

    def is_file(self) -> bool:
        kind, types = self._type()
        return kind == types.File

    def is_dir(self) -> bool:
        kind, types = self._type()
        return kind == types.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:  # FileNotFoundError when absent, as pathlib
            return f.read()

    def read_text(self, errors: str = "strict") -> str:
        return self.read_bytes().decode("utf-8", errors=errors)

    def iterdir(self) -> Iterator["StoragePath"]:
        import pyarrow.fs as pafs

        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            yield self / posixpath.basename(info.path.rstrip("/"))

    def glob(self, pattern: str) -> Iterator["StoragePath"]:
        """``*``-style patterns, one folder level per ``/`` (``*/params.json``, ``experiment_state-*.json``)."""
        head, _, rest = pattern.partition("/")
        for child in self.iterdir():
            if fnmatch.fnmatchcase(child.name, head):
                if not rest:
                    yield child
                else:
                    yield from child.glob(rest)

    # --- writing -------------------------------------------------------------------------------

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def write_bytes_atomic(self, data: bytes) -> None:
        """Readers never see half a file: on an object store one PUT of the whole file is atomic; elsewhere
        (HDFS, ...) a temporary file beside the target is moved over it."""
        if self.fs.type_name in OBJECT_STORES:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        tmp = posixpath.join(posixpath.dirname(self.path), f".{self.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, self.path)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise


Location = Union[Path, StoragePath]


def is_uri(text: str) -> bool:
    return "://" in text


def location(where: Union[str, Path, StoragePath], flag: str = "--storage-path") -> Location:
    """A local folder (also ``file://...``) as an absolute `Path`; any other URI as a `StoragePath`.

    An unknown scheme or a malformed URI is a `UserError` naming ``flag`` and the fix; nothing is contacted here.
    """
    if isinstance(where, (Path, StoragePath)):
        return where
    text = str(where)
    if not is_uri(text):
        return Path(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        return Path(urlsplit(text).path).resolve()
    import pyarrow
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pyarrow.ArrowInvalid, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "Unrecognized filesystem type" in first:
            raise UserError(
                f"{flag} '{text}': unknown storage scheme '{scheme}://'; use a folder (an NFS mount on every node), "
                "file://, s3://, gs:// or another scheme pyarrow.fs knows (hdfs://, abfs://)"
            ) from None
        raise UserError(f"{flag} '{text}' is not a storage URI pyarrow.fs reads ({first}); fix the URI") from None
    except OSError as err:  # e.g. a filesystem whose library is missing here
        raise UserError(f"{flag} '{text}': cannot open its storage ({error_gist(err)}); check the URI") from None
    return StoragePath(fs, path, text)._with_path(path.rstrip("/") or path)  # the URI in one spelling


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def write_bytes_atomic(path: Location, data: bytes) -> None:
    """Write a whole file so that no reader sees it half-written: a local file as `reid_core.io` writes
    it (a temporary file, then a rename), a `StoragePath` by one PUT or a move."""
    if isinstance(path, StoragePath):
        path.write_bytes_atomic(data)
    else:
        local_io.write_bytes_atomic(path, data)


def write_text_atomic(path: Location, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Location, obj: Any) -> None:
    """Strict JSON (NaN and inf as null), as `reid_core.io.write_json_atomic`."""
    if isinstance(path, StoragePath):
        write_text_atomic(path, local_io.json_text(obj))
    else:
        local_io.write_json_atomic(path, obj)


def bounded(call: Callable[[], Any], timeout_s: float = PROBE_TIMEOUT_S) -> Any:
    """``call()``, or `TimeoutError` after ``timeout_s``: a storage client may retry an unreachable endpoint or
    wait for cloud credentials for minutes. The call goes on in a daemon thread that exiting does not wait for."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    worker = threading.Thread(target=run, name="reid-tune-storage-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def is_folder(path: Location, flag: str = "experiment") -> bool:
    """Whether ``path`` is a folder; on a storage URI answered within `PROBE_TIMEOUT_S`, or one line naming why not."""
    if isinstance(path, Path):
        return path.is_dir()
    try:
        return bounded(path.is_dir)
    except (TimeoutError, OSError) as err:
        raise UserError(
            f"{flag} '{path}' cannot be read ({error_gist(err)}); check the URI, the network and the credentials"
        ) from None


def check_writable(root: Location, flag: str = "--storage-path") -> None:
    """The experiments' storage must be one this process can write, checked before Ray starts.

    A local folder: by making (and removing) a temporary folder in its nearest existing parent, which
    leaves nothing. A URI: by writing and deleting a small probe object under it, within `PROBE_TIMEOUT_S`
    (an object store may keep an empty folder marker for the root: where the experiments go anyway).
    """
    if isinstance(root, StoragePath):
        _check_uri_writable(root, flag)
        return
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} '{root}': '{existing}' is a file, not a folder; pass a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".reid-tune-probe-").cleanup()
    except OSError as err:
        raise UserError(
            f"{flag} '{root}' cannot be created or written here ({err.strerror or err}); pass a folder you can write to"
        ) from None


def _check_uri_writable(root: StoragePath, flag: str) -> None:
    probe = root / f".reid-tune-probe-{uuid.uuid4().hex[:12]}"

    def write_and_delete() -> None:
        if root.is_file():
            raise NotADirectoryError("it is an object, not a folder")
        probe.write_bytes_atomic(b"reid-tune storage probe\n")
        root.fs.delete_file(probe.path)

    try:
        bounded(write_and_delete)
    except TimeoutError as err:
        raise UserError(
            f"{flag} '{root}': its storage gave {err}; check the endpoint, the network and the credentials "
            "(e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)"
        ) from None
    except NotADirectoryError as err:
        raise UserError(f"{flag} '{root}': {err}; pass a folder URI") from None
    except Exception as err:  # OSError from pyarrow: refused, no such bucket, access denied, ...
        raise UserError(
            f"{flag} '{root}' cannot be written ({error_gist(err)}); check the URI, that the bucket exists, and the "
            "credentials in the environment"
        ) from None


def error_gist(err: BaseException, limit: int = 200) -> str:
    """The gist of a storage client's error: for S3 ``AWS Error NO_SUCH_BUCKET during PutObject operation: The
    specified bucket does not exist (Request ID: ...)`` is 'The specified bucket does not exist'."""
    text = _first_line(err)
    aws = re.search(r"AWS Error (\w+) during \w+ operation: ?(.*?)(?: \(Request ID.*)?$", text)
    if aws:
        text = aws.group(2) if aws.group(2) and aws.group(2) != "No response body." else aws.group(1)
    return text if len(text) <= limit else text[: limit - 3] + "..."
