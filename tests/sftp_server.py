"""A real SFTP server on 127.0.0.1 for tests (asyncssh's SFTP server, run in a background thread).

Reusable as a fixture:

    server = SftpTestServer(root)             # files under `root` are served at "/"
    port = server.start()
    env = server.env("/exports")               # EXPORT_SOURCE + password + host key settings
    env = server.env("/exports", auth="key")   # the same with a generated client key instead
    server.drop_after(50_000)                  # the next read past 50 kB aborts the connection (once)
    server.stop()

`known_hosts_line` is the server's real host key as a known_hosts line; `wrong_host_key_line` is a
valid key that is not the server's (for the refusal test).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import asyncssh


def _key_line(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class SftpTestServer:
    def __init__(self, root: str | Path, username: str = "alma", password: str = "s3cret-pw") -> None:
        self.root = Path(root)
        self.username = username
        self.password = password
        self.port = 0
        self.logins = 0
        self.bytes_served = 0
        self.drops = 0  # how many connections drop_after cut
        self._drop_after: int | None = None
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._other_key = asyncssh.generate_private_key("ssh-ed25519")
        self._client_keys: list[asyncssh.SSHKey] = []
        self._client_key_pem: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: Any = None
        self._lock = threading.Lock()

    # -- public API -------------------------------------------------------------------------------

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {_key_line(self._host_key)}"

    @property
    def wrong_host_key_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {_key_line(self._other_key)}"

    def client_key(self, kind: str = "ssh-ed25519") -> str:
        """A private key (OpenSSH PEM text; PKCS#1 PEM for RSA) the server accepts for `username`."""
        if kind not in self._client_key_pem:
            if kind == "ssh-rsa":
                key = asyncssh.generate_private_key(kind, key_size=2048)
                pem = key.export_private_key("pkcs1-pem").decode()
            else:
                key = asyncssh.generate_private_key(kind)
                pem = key.export_private_key("openssh").decode()
            self._client_keys.append(key)
            self._client_key_pem[kind] = pem
        return self._client_key_pem[kind]

    def url(self, folder: str = "/") -> str:
        return f"sftp://{self.username}@127.0.0.1:{self.port}{folder}"

    def env(self, folder: str = "/", auth: str = "password") -> dict[str, str]:
        """Settings for an sftp:// source pointing at `folder` of this server."""
        env = {"EXPORT_SOURCE": self.url(folder), "EXPORT_SOURCE_HOST_KEY": self.known_hosts_line}
        if auth == "key":
            env["EXPORT_SOURCE_KEY"] = self.client_key()
        else:
            env["EXPORT_SOURCE_PASSWORD"] = self.password
        return env

    def drop_after(self, nbytes: int) -> None:
        """Abort the SSH connection once, when file reads pass `nbytes` bytes from now."""
        with self._lock:
            self.bytes_served = 0
            self._drop_after = nbytes

    def start(self) -> int:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)
        return self.port

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._acceptor.close()
            await self._acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> SftpTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- asyncssh plumbing ------------------------------------------------------------------------

    async def _listen(self) -> None:
        owner = self
        asyncssh.set_log_level(logging.WARNING)
        asyncssh.set_sftp_log_level(logging.WARNING)

        class Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                ok = username == owner.username and password == owner.password
                owner.logins += ok
                return ok

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                ok = username == owner.username and any(
                    key.public_data == k.public_data for k in owner._client_keys)
                owner.logins += ok
                return ok

        class Sftp(asyncssh.SFTPServer):
            def __init__(self, chan: Any) -> None:
                super().__init__(chan, chroot=str(owner.root))

            def read(self, file_obj: Any, offset: int, size: int) -> bytes:
                data = super().read(file_obj, offset, size)
                with owner._lock:
                    owner.bytes_served += len(data)
                    drop = owner._drop_after is not None and owner.bytes_served > owner._drop_after
                    if drop:
                        owner._drop_after = None
                        owner.drops += 1
                if drop:
                    self.connection.abort()
                return data

        self._acceptor = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[self._host_key], server_factory=Server, sftp_factory=Sftp,
            allow_scp=False, process_factory=None,
        )
        self.port = self._acceptor.get_port()
