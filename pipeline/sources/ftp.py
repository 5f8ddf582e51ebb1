"""FTP and FTPS sources (`ftp://user@host:port/dir`, `ftps://...`, stdlib ftplib, passive mode).

`ftps://` is explicit FTPS (AUTH TLS) with a protected data channel and a verified certificate;
EXPORT_SOURCE_INSECURE=true skips the certificate check, with a warning. Every opened file gets its
own connection (FTP runs one transfer per connection), so a dropped transfer reconnects and
resumes with REST at the byte it reached; a server without REST is re-read from the start and the
bytes already delivered are skipped.
"""

from __future__ import annotations

import ftplib
import logging
import ssl
import threading
from collections.abc import Mapping
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from pipeline import settings
from pipeline.settings import SettingError
from pipeline.sources.base import (
    READ_BUFFER,
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

TIMEOUT = 60.0
_TRANSIENT = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


class _ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that reuses the control connection's TLS session on data connections.

    Many servers (vsftpd `require_ssl_reuse`, FileZilla Server) refuse data connections that do not
    resume the control session; stdlib ftplib does not do it by itself.
    """

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[Any, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)  # type: ignore[union-attr]
        return conn, size


def _is_missing(exc: ftplib.error_perm) -> bool:
    text = str(exc)
    return text.startswith("550") or "no such file" in text.lower() or "not found" in text.lower()


class _Transfer:
    """One RETR on its own connection; `read` returns b"" only after the server confirmed (226)."""

    def __init__(self, ftp: ftplib.FTP, conn: Any, total_size: int | None) -> None:
        self._ftp = ftp
        self._conn = conn
        self.total_size = total_size

    def read(self, n: int) -> bytes:
        if self._conn is None:
            return b""
        data = self._conn.recv(min(n, READ_BUFFER))
        if data:
            return data
        conn, self._conn = self._conn, None
        if isinstance(conn, ssl.SSLSocket):
            try:
                conn.unwrap()
            except (OSError, ValueError):
                pass
        conn.close()
        self._ftp.voidresp()  # 426/451 here means the transfer broke: raises error_temp -> resume
        return b""

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            try:
                self._ftp.close()
            except OSError:
                pass


class FtpSource(Source):
    def __init__(self, host: str, port: int, username: str, password: str, folder: str, *, tls: bool = False,
                 insecure: bool = False, timeout: float = TIMEOUT, reconnect_backoff: float = 0.5) -> None:
        self.host, self.port, self.username = host, port, username
        self.folder = folder
        self.tls = tls
        scheme = "ftps" if tls else "ftp"
        self.location = f"{scheme}://{username}@{host}:{port}{folder if folder.startswith('/') else '/' + folder}"
        self._password = password
        self._insecure = insecure
        self._timeout = timeout
        self._backoff = reconnect_backoff
        self._lock = threading.Lock()
        self._control: ftplib.FTP | None = None
        self.connections = 0

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None, **kwargs: Any) -> FtpSource:
        parsed = urlparse(url)
        if parsed.password:
            raise SettingError("EXPORT_SOURCE", "must not contain a password; put it in EXPORT_SOURCE_PASSWORD")
        if not parsed.hostname:
            raise SettingError("EXPORT_SOURCE", f"{parsed.scheme} URL has no host: {url!r}")
        tls = parsed.scheme == "ftps"
        username = unquote(parsed.username or "anonymous")
        password = settings.get("EXPORT_SOURCE_PASSWORD", environ)
        if password is None and username != "anonymous":
            raise SettingError("EXPORT_SOURCE_PASSWORD", f"is not set (needed to log in to {parsed.hostname})")
        return cls(parsed.hostname, parsed.port or 21, username, password or "", unquote(parsed.path),
                   tls=tls, insecure=settings.get("EXPORT_SOURCE_INSECURE", environ), **kwargs)

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self._insecure:
            log.warning("EXPORT_SOURCE_INSECURE=true: NOT verifying the TLS certificate of %s", self.location)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _login(self) -> ftplib.FTP:
        ftp: ftplib.FTP
        if self.tls:
            ftp = _ReusingFTP_TLS(context=self._tls_context(), timeout=self._timeout)
        else:
            ftp = ftplib.FTP(timeout=self._timeout)
        try:
            ftp.connect(self.host, self.port)
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.auth()
            ftp.login(self.username, self._password)
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.set_pasv(True)
            ftp.voidcmd("TYPE I")
            folder = self._folder_path()
            if folder:
                try:
                    ftp.cwd(folder)
                except ftplib.error_perm as exc:
                    raise SourceFileNotFound(f"folder {self.location} does not exist ({exc})") from None
        except ssl.SSLCertVerificationError as exc:
            ftp.close()
            raise SourceError(f"TLS certificate of {self.location} is not trusted: {exc.verify_message}") from None
        except ftplib.error_perm as exc:
            ftp.close()
            raise SourceError(f"FTP login to {self.location} failed: {exc}") from None
        except SourceError:
            ftp.close()
            raise
        except (OSError, EOFError, ftplib.Error) as exc:
            ftp.close()
            raise SourceUnavailable(f"cannot connect to {self.location}: {exc}") from exc
        self.connections += 1
        return ftp

    def _folder_path(self) -> str:
        return remote_folder(self.folder)

    def _with_control(self, op: Any) -> Any:
        """Run a command on the shared control connection; reconnect once if it dropped."""
        with self._lock:
            for attempt in (1, 2):
                if self._control is None:
                    self._control = self._login()
                try:
                    return op(self._control)
                except SourceError:
                    raise
                except _TRANSIENT as exc:
                    self._control.close()
                    self._control = None
                    if attempt == 2:
                        raise SourceError(f"{self.location}: {exc}") from exc
                    log.warning("FTP %s: %s; reconnecting", self.location, exc)

    def close(self) -> None:
        with self._lock:
            if self._control is not None:
                try:
                    self._control.quit()
                except (OSError, EOFError, ftplib.Error):
                    self._control.close()
                self._control = None

    def list(self) -> list[SourceEntry]:
        def listing(ftp: ftplib.FTP) -> list[SourceEntry]:
            try:
                entries = []
                for name, facts in ftp.mlsd(facts=["type", "size"]):
                    if facts.get("type", "").lower() == "file" and _safe(name):
                        size = facts.get("size")
                        entries.append(SourceEntry(name, int(size) if size and size.isdigit() else None))
                return entries
            except ftplib.error_perm as exc:
                if not str(exc).startswith(("500", "502", "504")):  # MLSD not supported -> NLST + SIZE
                    raise
            entries = []
            names = ftp.nlst()
            ftp.voidcmd("TYPE I")
            for listed in names:
                name = listed.rsplit("/", 1)[-1]  # some servers answer NLST with folder/name
                if not _safe(name):
                    continue
                try:
                    size = ftp.size(name)
                except ftplib.error_perm:  # a folder, or a file that vanished
                    continue
                entries.append(SourceEntry(name, size))
            return entries

        return self._with_control(listing)

    def size(self, name: str) -> int:
        check_name(name)

        def size(ftp: ftplib.FTP) -> int:
            ftp.voidcmd("TYPE I")  # a listing switched to ASCII, where SIZE is refused
            try:
                value = ftp.size(name)
            except ftplib.error_perm as exc:
                if _is_missing(exc):
                    raise SourceFileNotFound(f"{name} is not in {self.location}") from None
                raise SourceError(f"SIZE {name} on {self.location}: {exc}") from None
            if value is None:
                raise SourceError(f"{self.location} did not report the size of {name}")
            return value

        return self._with_control(size)

    def open(self, name: str, offset: int = 0) -> BinaryIO:
        check_name(name)
        no_rest = {"flag": False}

        def opener(at: int) -> _Transfer:
            ftp = self._login()
            try:
                try:
                    total = ftp.size(name)
                except ftplib.error_perm as exc:
                    if _is_missing(exc):
                        raise SourceFileNotFound(
                            f"{name} is not in {self.location} (removed after it was listed?)") from None
                    total = None
                conn = None
                if at and not no_rest["flag"]:
                    try:
                        conn, _ = ftp.ntransfercmd(f"RETR {name}", rest=at)
                    except ftplib.error_perm as exc:
                        if _is_missing(exc):
                            raise
                        log.warning("%s does not support REST (%s): re-reading %s from the start",
                                    self.location, exc, name)
                        no_rest["flag"] = True
                if conn is None:
                    conn, _ = ftp.ntransfercmd(f"RETR {name}")
                    transfer = _Transfer(ftp, conn, total)
                    skip = at
                    while skip:
                        data = transfer.read(min(skip, READ_BUFFER))
                        if not data:
                            raise EOFError(f"{name} ended before byte {at}")
                        skip -= len(data)
                    return transfer
                return _Transfer(ftp, conn, total)
            except ftplib.error_perm as exc:
                ftp.close()
                if _is_missing(exc):
                    raise SourceFileNotFound(
                        f"{name} is not in {self.location} (removed after it was listed?)") from None
                raise SourceError(f"RETR {name} on {self.location}: {exc}") from None
            except BaseException:
                ftp.close()
                raise

        return buffered(ResumingReader(name, opener, offset=offset, resumable=True, transient=_TRANSIENT,
                                       backoff=self._backoff, location=f"{self.location}/{name}"))


def _safe(name: str) -> bool:
    try:
        check_name(name)
    except SourceError:
        log.warning("ignoring listed file with an unsafe name: %r", name)
        return False
    return True
