"""SFTP source (`sftp://user@host:port/dir`, paramiko): institution servers and SFTP-enabled Azure Storage.

The server's host key is checked against EXPORT_SOURCE_HOST_KEY (known_hosts lines), because the
password or key we send must only ever reach the real server; skipping the check takes an explicit
EXPORT_SOURCE_INSECURE=true and is logged as a warning on every connection. Reads are pipelined in
bounded windows, fetched one window ahead (never the whole file in memory), and resume at the byte
offset after a drop.
"""

from __future__ import annotations

import base64
import io
import logging
import queue
import stat
import threading
from collections.abc import Mapping
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

import paramiko

from pipeline import settings
from pipeline.settings import SettingError
from pipeline.sources.base import (
    ResumingReader,
    Source,
    SourceEntry,
    SourceError,
    SourceFileNotFound,
    SourceUnavailable,
    buffered,
    check_name,
    remote_folder,
)

log = logging.getLogger(__name__)

WINDOW = 4 * 1024 * 1024  # bytes requested at once (128 pipelined 32 KiB SFTP reads)
TIMEOUT = 60.0  # seconds for connect, banner, auth and each channel operation
_TRANSIENT = (OSError, EOFError, paramiko.SSHException)


def parse_known_hosts(text: str) -> list[paramiko.PKey]:
    """Public keys from known_hosts lines (`[host]:port type base64`, the host part optional)."""
    keys: list[paramiko.PKey] = []
    for raw in text.replace("\\n", "\n").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            raise SettingError("EXPORT_SOURCE_HOST_KEY", "markers such as @cert-authority are not supported")
        fields = line.split()
        if not ("ssh-" in fields[0] or fields[0].startswith(("ecdsa-", "sk-"))):
            fields = fields[1:]  # drop the host pattern: we verify the key, the URL names the host
        if len(fields) < 2:
            raise SettingError("EXPORT_SOURCE_HOST_KEY", f"cannot read a key type and key from {line[:60]!r}")
        try:
            keys.append(paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1])))
        except Exception as exc:
            raise SettingError("EXPORT_SOURCE_HOST_KEY", f"unreadable {fields[0]} key: {exc}") from None
    if not keys:
        raise SettingError("EXPORT_SOURCE_HOST_KEY", "has no key line")
    return keys


def load_private_key(text: str) -> paramiko.PKey:
    """A private key from PEM/OpenSSH text (RSA, ECDSA or Ed25519, unencrypted)."""
    text = text.replace("\\n", "\n").strip() + "\n"
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            raise SettingError("EXPORT_SOURCE_KEY", "is encrypted; store an unencrypted key (in Key Vault)") from None
        except Exception as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise SettingError("EXPORT_SOURCE_KEY", "is not a readable RSA, ECDSA or Ed25519 private key")


def known_hosts_line(host: str, port: int, key: paramiko.PKey) -> str:
    """The known_hosts line for a key, for messages that tell an operator what the server presented."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.get_name()} {key.get_base64()}"


class _Reject(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise SourceError(
            f"SFTP server {hostname} presented host key {key.get_name()} {key.fingerprint}, which does not "
            f"match EXPORT_SOURCE_HOST_KEY. If you have verified it with the server's administrator, set "
            f"EXPORT_SOURCE_HOST_KEY to: {hostname} {key.get_name()} {key.get_base64()}"
        )


class _WarnInsecure(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.warning("EXPORT_SOURCE_INSECURE=true: NOT verifying SFTP host key of %s (%s %s); set "
                    "EXPORT_SOURCE_HOST_KEY to '%s %s %s'", hostname, key.get_name(), key.fingerprint,
                    hostname, key.get_name(), key.get_base64())


class _Window:
    """Chunks of one remote file, fetched in pipelined windows of WINDOW bytes by a helper thread.

    The thread fetches the next window while the consumer works through the current one, so the
    network and the engine overlap; the queue holds one window, so at most about three windows
    are in memory per open file. Errors are handed to the consumer in order.
    """

    def __init__(self, channel: paramiko.SFTPClient, handle: paramiko.SFTPFile, offset: int, size: int) -> None:
        self._channel = channel  # this file's own SFTP channel: paramiko's client is not thread-safe
        self._handle = handle
        self._size = size
        self.total_size = size  # the resuming reader treats a clean close before this as a drop
        self._pending = b""
        self._at = 0
        self._finished = False
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(offset,), name="sftp-read", daemon=True)
        self._thread.start()

    def _produce(self, pos: int) -> None:
        try:
            while not self._stop.is_set():
                if pos < self._size:
                    data = b"".join(self._handle.readv([(pos, min(WINDOW, self._size - pos))]))
                else:  # past the size seen at open: read on, in case the file grew
                    self._handle.seek(pos)
                    data = self._handle.read(WINDOW)
                self._put(data)
                if not data:
                    return
                pos += len(data)
        except BaseException as exc:  # handed to the consumer, which decides (resume or fail)
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, n: int) -> bytes:
        if not self._pending:
            if self._finished:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            if not item:
                self._finished = True
                return b""
            self._pending = item
        data = self._pending[self._at:self._at + n]  # copy only what is asked for
        self._at += len(data)
        if self._at >= len(self._pending):
            self._pending, self._at = b"", 0
        return data

    def close(self) -> None:
        self._stop.set()
        self._pending = b""
        self._thread.join(timeout=1)
        try:
            if not self._thread.is_alive():
                self._handle.close()
            # else: a read is still waiting for the server (slow or dead link); closing the channel
            # below ends it, and no second thread reads answers from the channel meanwhile.
        finally:
            self._channel.close()


class SftpSource(Source):
    def __init__(self, host: str, port: int, username: str, folder: str, *, password: str | None = None,
                 key: paramiko.PKey | None = None, host_keys: list[paramiko.PKey] | None = None,
                 insecure: bool = False, timeout: float = TIMEOUT, reconnect_backoff: float = 0.5) -> None:
        if not host_keys and not insecure:
            raise SettingError("EXPORT_SOURCE_HOST_KEY",
                               "is not set: the SFTP server's host key must be verified (or set "
                               "EXPORT_SOURCE_INSECURE=true for a local experiment)")
        if password is None and key is None:
            raise SettingError("EXPORT_SOURCE_PASSWORD", "or EXPORT_SOURCE_KEY must be set for an sftp:// source")
        self.host, self.port, self.username = host, port, username
        self.folder = remote_folder(folder) or "."
        self.location = f"sftp://{username}@{host}:{port}{folder if folder.startswith('/') else '/' + folder}"
        self._password = password
        self._key = key
        self._host_keys = host_keys or []
        self._insecure = insecure
        self._timeout = timeout
        self._backoff = reconnect_backoff
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.connections = 0  # how many SSH connections were made (reconnects show here)

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None, **kwargs: Any) -> SftpSource:
        parsed = urlparse(url)
        if parsed.password:
            raise SettingError("EXPORT_SOURCE", "must not contain a password; put it in EXPORT_SOURCE_PASSWORD")
        if not parsed.hostname:
            raise SettingError("EXPORT_SOURCE", f"sftp URL has no host: {url!r}")
        if not parsed.username:
            raise SettingError("EXPORT_SOURCE", "sftp URL needs a user name: sftp://user@host:port/dir")
        key_text = settings.get("EXPORT_SOURCE_KEY", environ)
        host_key_text = settings.get("EXPORT_SOURCE_HOST_KEY", environ)
        insecure = settings.get("EXPORT_SOURCE_INSECURE", environ)
        host_keys = parse_known_hosts(host_key_text) if host_key_text else []
        return cls(
            parsed.hostname, parsed.port or 22, unquote(parsed.username), unquote(parsed.path),
            password=settings.get("EXPORT_SOURCE_PASSWORD", environ),
            key=load_private_key(key_text) if key_text else None,
            host_keys=host_keys, insecure=insecure and not host_keys, **kwargs,
        )

    # -- connection -------------------------------------------------------------------------------

    def _connect(self) -> paramiko.SFTPClient:
        # paramiko keeps one known key per key type; with several accepted keys of one type (key
        # rotation) a mismatch on the first is retried once with the accepted key the server showed.
        chosen: dict[str, paramiko.PKey] = {}
        for key in self._host_keys:
            chosen.setdefault(key.get_name(), key)
        accepted = {key.asbytes() for key in self._host_keys}
        for attempt in (1, 2):
            try:
                client = self._handshake(chosen)
                break
            except paramiko.BadHostKeyException as exc:
                if attempt == 1 and exc.key.asbytes() in accepted:
                    chosen[exc.key.get_name()] = exc.key
                    continue
                raise SourceError(
                    f"SFTP server {self.host}:{self.port} presented host key {exc.key.get_name()} "
                    f"{exc.key.fingerprint}, not the one in EXPORT_SOURCE_HOST_KEY: refusing to connect "
                    f"(someone may be intercepting, or the server's key changed)") from None
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(self._timeout)
        self._client, self._sftp = client, sftp
        self.connections += 1
        return sftp

    def _handshake(self, host_keys: dict[str, paramiko.PKey]) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        known_as = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        for key in host_keys.values():
            client.get_host_keys().add(known_as, key.get_name(), key)
        client.set_missing_host_key_policy(_WarnInsecure() if self._insecure else _Reject())
        try:
            client.connect(
                self.host, self.port, username=self.username, password=self._password, pkey=self._key,
                timeout=self._timeout, banner_timeout=self._timeout, auth_timeout=self._timeout,
                channel_timeout=self._timeout, allow_agent=False, look_for_keys=False,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise
        except paramiko.AuthenticationException:
            client.close()
            raise SourceError(f"SFTP login to {self.location} failed: check the user name and "
                              "EXPORT_SOURCE_PASSWORD / EXPORT_SOURCE_KEY") from None
        except SourceError:
            client.close()
            raise
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise SourceUnavailable(f"cannot connect to {self.location}: {exc}") from exc
        return client

    def _session(self, fresh: bool = False) -> paramiko.SFTPClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if fresh or self._sftp is None or transport is None or not transport.is_active():
                self._drop()
                return self._connect()
            return self._sftp

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as exc:
                log.debug("closing SFTP connection: %s", exc)
        self._client = self._sftp = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _file_channel(self, fresh: bool) -> paramiko.SFTPClient:
        """A new SFTP channel on the shared SSH connection, for one open file and its reader thread."""
        self._session(fresh=fresh)
        with self._lock:
            client = self._client
        if client is None:
            raise SourceUnavailable(f"the connection to {self.location} closed")
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(self._timeout)
        return sftp

    def _remote(self, name: str) -> str:
        check_name(name)
        return name if self.folder == "." else f"{self.folder.rstrip('/')}/{name}"

    # -- contract ---------------------------------------------------------------------------------

    def list(self) -> list[SourceEntry]:
        try:
            attrs = self._retrying(lambda sftp: sftp.listdir_attr(self.folder))
        except FileNotFoundError:
            raise SourceFileNotFound(f"folder {self.location} does not exist") from None
        # a server that sends no permissions (st_mode None) gets the benefit of the doubt
        return [SourceEntry(a.filename, a.st_size) for a in attrs
                if (a.st_mode is None or stat.S_ISREG(a.st_mode)) and check_name_ok(a.filename)]

    def size(self, name: str) -> int:
        path = self._remote(name)
        try:
            return int(self._retrying(lambda sftp: sftp.stat(path)).st_size or 0)
        except FileNotFoundError:
            raise SourceFileNotFound(f"{name} is not in {self.location}") from None

    def open(self, name: str, offset: int = 0) -> BinaryIO:
        path = self._remote(name)
        state = {"first": True}

        def opener(at: int) -> _Window:
            channel = self._file_channel(fresh=not state["first"])
            state["first"] = False
            try:
                handle = channel.open(path, "rb")
                size = handle.stat().st_size or 0
            except FileNotFoundError:
                channel.close()
                raise SourceFileNotFound(f"{name} is not in {self.location} (removed after it was listed?)") from None
            except BaseException:
                channel.close()
                raise
            return _Window(channel, handle, at, size)

        return buffered(ResumingReader(name, opener, offset=offset, resumable=True, transient=_TRANSIENT,
                                       backoff=self._backoff, location=f"{self.location}/{name}"))

    def _retrying(self, op: Any) -> Any:
        """Run a metadata call; on a dropped connection reconnect once and try again."""
        try:
            return op(self._session())
        except (FileNotFoundError, SourceError):
            raise
        except _TRANSIENT as exc:
            log.warning("SFTP %s: %s; reconnecting", self.location, exc)
            return op(self._session(fresh=True))


def check_name_ok(name: str) -> bool:
    try:
        check_name(name)
    except SourceError:
        log.warning("ignoring listed file with an unsafe name: %r", name)
        return False
    return True
