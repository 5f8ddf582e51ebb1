"""A real FTP / FTPS server on 127.0.0.1 for tests (pyftpdlib, run in a background thread).

    server = FtpTestServer(root)                 # files under `root`; user "alma" with a password
    server = FtpTestServer(root, tls=True)       # explicit FTPS with a generated self-signed cert
    server = FtpTestServer(root, rest=False)     # a server that refuses REST (no resume)
    server = FtpTestServer(root, mlsd=False)     # an old server without MLSD (NLST + SIZE)
    port = server.start(); env = server.env("/exports")
    server.drop_after(50_000)                    # the next transfer is cut after 50 kB (once), 426
    server.stop()

`ca_file` is the certificate to trust (point SSL_CERT_FILE at it for a verified FTPS connection).
"""

from __future__ import annotations

import datetime
import ipaddress
import threading
from pathlib import Path
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.servers import ThreadedFTPServer


def make_self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "ftps-cert.pem", folder / "ftps-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Dropping:
    """Data-channel mixin: cut the transfer once the armed byte count is passed."""

    owner: FtpTestServer

    def send(self, data: Any) -> int:
        result = super().send(data)  # type: ignore[misc]
        owner = self.owner
        with owner._lock:
            owner.bytes_served += result
            drop = owner._drop_after is not None and owner.bytes_served > owner._drop_after
            if drop:
                owner._drop_after = None
                owner.drops += 1
        if drop:
            self._resp = ("426 Connection closed; transfer aborted.", lambda *a, **k: None)  # type: ignore[attr-defined]
            self.close()  # type: ignore[attr-defined]
        return result


class FtpTestServer:
    def __init__(self, root: str | Path, *, tls: bool = False, rest: bool = True, mlsd: bool = True,
                 username: str = "alma", password: str = "ftp-pw") -> None:
        self.root = Path(root)
        self.tls = tls
        self.rest = rest
        self.mlsd = mlsd
        self.username = username
        self.password = password
        self.port = 0
        self.bytes_served = 0
        self.drops = 0  # how many transfers drop_after cut
        self.ca_file: Path | None = None
        self._drop_after: int | None = None
        self._lock = threading.Lock()
        self._server: ThreadedFTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def url(self, folder: str = "/") -> str:
        return f"{'ftps' if self.tls else 'ftp'}://{self.username}@127.0.0.1:{self.port}{folder}"

    def env(self, folder: str = "/") -> dict[str, str]:
        return {"EXPORT_SOURCE": self.url(folder), "EXPORT_SOURCE_PASSWORD": self.password}

    def drop_after(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_served = 0
            self._drop_after = nbytes

    def start(self) -> int:
        authorizer = DummyAuthorizer()
        authorizer.add_user(self.username, self.password, str(self.root), perm="elr")
        owner = self
        base_handler: type[FTPHandler] = FTPHandler
        base_dtp: type[DTPHandler] = DTPHandler
        if self.tls:
            from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

            self.ca_file, key_file = make_self_signed(self.root.parent if self.root.parent.exists() else self.root)
            base_handler, base_dtp = TLS_FTPHandler, TLS_DTPHandler

        class Dtp(_Dropping, base_dtp):  # type: ignore[valid-type, misc]
            pass

        Dtp.owner = owner

        class Handler(base_handler):  # type: ignore[valid-type, misc]
            dtp_handler = Dtp

            def handle_auth_failed(self, msg: str, password: str) -> None:
                # pyftpdlib delays this answer on a timer that a threaded server's per-connection
                # loop may never run (the client then sees a reset): answer at once instead.
                self.respond("530 Authentication failed.")
                self.username = ""

            def ftp_MLSD(self, path: str) -> None:
                if not owner.mlsd:
                    self.respond("500 Command \"MLSD\" not understood.")
                    return
                super().ftp_MLSD(path)

            def ftp_REST(self, line: str) -> None:
                if not owner.rest:
                    self.respond("502 Command not implemented.")
                    return
                super().ftp_REST(line)

        Handler.authorizer = authorizer
        Handler.use_sendfile = False  # sendfile() would bypass the data channel's send() (and drop_after)
        Handler.banner = "test ftp ready"
        if self.tls:
            Handler.certfile = str(self.ca_file)
            Handler.keyfile = str(key_file)
            Handler.tls_control_required = True
            Handler.tls_data_required = True
        self._server = ThreadedFTPServer(("127.0.0.1", 0), Handler)
        # pyftpdlib keeps the "stop" event on the class: stopping one server would end the
        # connections of every other one in this process. Give each server its own.
        self._server._exit = threading.Event()
        self.port = self._server.address[1]
        self._thread = threading.Thread(target=self._serve, name="ftp-server", daemon=True)
        self._thread.start()
        return self.port

    def _serve(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            self._server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)

    def stop(self) -> None:
        if self._server is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server.close_all()
        self._server = None

    def __enter__(self) -> FtpTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
