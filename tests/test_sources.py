"""Export sources against real servers on 127.0.0.1: a local folder, SFTP (asyncssh), FTP and FTPS
(pyftpdlib) and Azure blobs (Azurite). Dropped connections, vanished files and hostile names included."""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import threading
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from pipeline.settings import SettingError
from pipeline.sources import (
    SourceEntry,
    SourceError,
    SourceFileNotFound,
    UnsafeName,
    check_name,
    open_source,
)
from pipeline.sources.blob import BlobSource
from tests.ftp_server import FtpTestServer
from tests.sftp_server import SftpTestServer

HOSTILE = ["../x", "/etc/passwd", "a/b", "a\\b", "..", "", "C:evil", "x\x00y"]
BIG = 1_700_000  # spans several SFTP read windows and blob chunks


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def fill(folder: Path) -> dict[str, bytes]:
    """An export folder: split files, a tar.gz, a subfolder and an unrelated file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "BIBS_1_1.xml": payload(BIG, 1),
        "BIBS_1_2.xml": payload(70_000, 2),
        "BIBS_1_10.xml": b"",
        "other.tar.gz": payload(5000, 3),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "nested.xml").write_bytes(b"nested")
    return files


def read_all(source, name: str, offset: int = 0, step: int = 65536) -> bytes:
    with source.open(name, offset) as fh:
        parts = []
        while chunk := fh.read(step):
            parts.append(chunk)
    return b"".join(parts)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_contract(source, files: dict[str, bytes]) -> None:
    """What every source must do with the folder `fill` made."""
    listed = {e.name: e.size for e in source.list()}
    assert listed == {name: len(data) for name, data in files.items()}  # no subfolder, sizes right
    for name, data in files.items():
        assert source.size(name) == len(data)
        assert digest(read_all(source, name)) == digest(data)
    big = files["BIBS_1_1.xml"]
    assert read_all(source, "BIBS_1_1.xml", offset=123_457) == big[123_457:]
    with source.open("BIBS_1_1.xml") as fh:  # read(n) is bounded and in order
        assert fh.read(10) == big[:10]
        assert fh.read(5) == big[10:15]
    for bad in HOSTILE:
        with pytest.raises(UnsafeName):
            source.open(bad)
        with pytest.raises(UnsafeName):
            source.size(bad)
    with pytest.raises(SourceFileNotFound, match="missing.xml"):
        source.open("missing.xml")


# -- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name):
    with pytest.raises(UnsafeName):
        check_name(name)


@pytest.mark.parametrize("name", ["BIBS_1.xml", "a..b.xml", ".hidden", "export 1.mrc", "ü.xml"])
def test_plain_names_pass(name):
    assert check_name(name) == name


def test_unknown_scheme_and_password_in_url_are_refused(clean_env):
    with pytest.raises(SettingError, match="EXPORT_SOURCE: unsupported source"):
        open_source("gopher://example/x")
    with pytest.raises(SettingError, match="EXPORT_SOURCE_PASSWORD"):
        open_source("sftp://alma:pw@example.org/x", {"EXPORT_SOURCE_HOST_KEY": "x ssh-ed25519 AAAA"})
    with pytest.raises(SettingError, match="EXPORT_SOURCE: is not set"):
        open_source(None, {})


# -- local --------------------------------------------------------------------------------------------


def test_local_folder(tmp_path):
    files = fill(tmp_path / "exports")
    with open_source(f"file://{tmp_path / 'exports'}") as source:
        check_contract(source, files)
    with pytest.raises(SourceFileNotFound, match="does not exist"):
        open_source(f"file://{tmp_path / 'nope'}").list()


def test_local_refuses_symlinks_out_of_the_folder(tmp_path):
    fill(tmp_path / "exports")
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "exports" / "link.xml").symlink_to(tmp_path / "secret")
    source = open_source(str(tmp_path / "exports"))
    assert "link.xml" not in {e.name for e in source.list()}
    with pytest.raises(SourceError, match="symbolic link"):
        source.open("link.xml")


# -- SFTP ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sftp(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftp")
    files = fill(root / "exports")
    with SftpTestServer(root) as server:
        server.files = files
        yield server


def sftp_source(server, env_extra=None, auth="password", **kwargs):
    from pipeline.sources.sftp import SftpSource

    env = server.env("/exports", auth=auth)
    env.update(env_extra or {})
    return SftpSource.from_url(env["EXPORT_SOURCE"], env, reconnect_backoff=0, **kwargs)


def test_sftp_password_login(sftp):
    with sftp_source(sftp) as source:
        check_contract(source, sftp.files)


@pytest.mark.parametrize("kind", ["ssh-ed25519", "ssh-rsa"])
def test_sftp_key_login(sftp, kind):
    env = {"EXPORT_SOURCE_KEY": sftp.client_key(kind)}
    from pipeline.sources.sftp import SftpSource

    env.update({"EXPORT_SOURCE": sftp.url("/exports"), "EXPORT_SOURCE_HOST_KEY": sftp.known_hosts_line})
    with SftpSource.from_url(env["EXPORT_SOURCE"], env) as source:
        assert source.size("BIBS_1_2.xml") == 70_000


@pytest.mark.parametrize("folder", ["/~/exports", "/exports/"])
def test_sftp_folder_relative_to_login_folder(sftp, folder):
    from pipeline.sources.sftp import SftpSource

    env = sftp.env(folder)
    with SftpSource.from_url(env["EXPORT_SOURCE"], env) as source:
        assert {e.name for e in source.list()} >= {"BIBS_1_1.xml", "BIBS_1_2.xml"}
        assert source.size("BIBS_1_2.xml") == 70_000


def test_sftp_key_and_host_key_as_one_line_app_settings(sftp):
    """Portal app settings are one line: PEM newlines and several known_hosts lines arrive as \\n."""
    from pipeline.sources.sftp import SftpSource

    env = {"EXPORT_SOURCE": sftp.url("/exports"), "EXPORT_SOURCE_KEY": sftp.client_key().replace("\n", "\\n"),
           "EXPORT_SOURCE_HOST_KEY": sftp.wrong_host_key_line + "\\n" + sftp.known_hosts_line}
    with SftpSource.from_url(env["EXPORT_SOURCE"], env) as source:
        assert source.size("BIBS_1_2.xml") == 70_000
    # the right key first and then another of the same type (key rotation) works too
    env["EXPORT_SOURCE_HOST_KEY"] = sftp.known_hosts_line + "\\n" + sftp.wrong_host_key_line
    with SftpSource.from_url(env["EXPORT_SOURCE"], env) as source:
        assert source.size("BIBS_1_2.xml") == 70_000


def test_sftp_wrong_host_key_is_refused_before_any_login(sftp):
    before = sftp.logins
    source = sftp_source(sftp, {"EXPORT_SOURCE_HOST_KEY": sftp.wrong_host_key_line})
    with pytest.raises(SourceError, match="host key"):
        source.list()
    assert sftp.logins == before  # the password never went to the impostor


def test_sftp_without_host_key_needs_explicit_insecure(sftp, caplog):
    env = sftp.env("/exports")
    del env["EXPORT_SOURCE_HOST_KEY"]
    with pytest.raises(SettingError, match="EXPORT_SOURCE_HOST_KEY"):
        open_source(env["EXPORT_SOURCE"], env)
    env["EXPORT_SOURCE_INSECURE"] = "true"
    caplog.set_level(logging.WARNING)
    with open_source(env["EXPORT_SOURCE"], env) as source:
        assert source.size("BIBS_1_2.xml") == 70_000
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NOT verifying" in m for m in warning)
    assert all(sftp.password not in m for m in warning)


def test_sftp_bad_credentials_and_bad_settings(sftp):
    with pytest.raises(SourceError, match="login .* failed"):
        sftp_source(sftp, {"EXPORT_SOURCE_PASSWORD": "wrong"}).list()
    with pytest.raises(SettingError, match="EXPORT_SOURCE_KEY"):
        sftp_source(sftp, {"EXPORT_SOURCE_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n"})
    with pytest.raises(SettingError, match="EXPORT_SOURCE_HOST_KEY"):
        sftp_source(sftp, {"EXPORT_SOURCE_HOST_KEY": "[127.0.0.1]:22 ssh-ed25519 !!notbase64"})
    with pytest.raises(SourceFileNotFound, match="does not exist"):
        from pipeline.sources.sftp import SftpSource

        env = sftp.env("/nope")
        SftpSource.from_url(env["EXPORT_SOURCE"], env).list()


def test_sftp_connection_dropped_mid_file_resumes_with_identical_bytes(sftp):
    with sftp_source(sftp) as source:
        source.list()
        sftp.drop_after(600_000)
        data = read_all(source, "BIBS_1_1.xml")
        assert source.connections == 2  # it reconnected once
    assert sftp.drops == 1
    assert digest(data) == digest(sftp.files["BIBS_1_1.xml"])


def test_sftp_two_open_files_metadata_calls_and_early_close(sftp):
    big, small = sftp.files["BIBS_1_1.xml"], sftp.files["BIBS_1_2.xml"]
    with sftp_source(sftp) as source:
        a, b = source.open("BIBS_1_1.xml"), source.open("BIBS_1_2.xml")
        got_a, got_b = [], []
        while True:  # interleave two readers and metadata calls on one connection
            x, y = a.read(50_000), b.read(7_000)
            got_a.append(x)
            got_b.append(y)
            assert source.size("BIBS_1_10.xml") == 0
            if not x and not y:
                break
        assert (b"".join(got_a), b"".join(got_b)) == (big, small)
        with source.open("BIBS_1_1.xml") as early:
            assert early.read(10) == big[:10]  # closed with most of the file unread
        assert read_all(source, "BIBS_1_2.xml") == small
        assert source.connections == 1
        a.close()
        b.close()


def test_sftp_file_that_disappears_between_list_and_open(sftp):
    (sftp.root / "exports" / "gone.xml").write_bytes(b"x")
    with sftp_source(sftp) as source:
        assert SourceEntry("gone.xml", 1) in source.list()
        (sftp.root / "exports" / "gone.xml").unlink()
        with pytest.raises(SourceFileNotFound, match="gone.xml"):
            source.open("gone.xml")


def test_sftp_server_that_never_answers_is_unavailable():
    from pipeline.sources.sftp import SftpSource

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = SftpSource("127.0.0.1", port, "alma", "/", password="x", insecure=True, timeout=2)
    with pytest.raises(SourceError, match="cannot connect"):
        source.list()


# -- FTP / FTPS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ftp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftp")
    return root, fill(root / "exports")


@pytest.fixture(scope="module")
def ftp(ftp_root):
    with FtpTestServer(ftp_root[0]) as server:
        server.files = ftp_root[1]
        yield server


def ftp_source(server, folder="/exports", extra=None):
    from pipeline.sources.ftp import FtpSource

    env = server.env(folder)
    env.update(extra or {})
    return FtpSource.from_url(env["EXPORT_SOURCE"], env, reconnect_backoff=0)


def test_ftp(ftp):
    with ftp_source(ftp) as source:
        check_contract(source, ftp.files)


def test_ftp_folder_relative_to_login_folder(ftp):
    with ftp_source(ftp, folder="/~/exports") as source:
        assert source.size("BIBS_1_2.xml") == 70_000


def test_ftp_dropped_transfer_resumes_with_rest(ftp):
    with ftp_source(ftp) as source:
        ftp.drop_after(500_000)
        data = read_all(source, "BIBS_1_1.xml")
    assert ftp.drops == 1
    assert digest(data) == digest(ftp.files["BIBS_1_1.xml"])


def test_ftp_without_rest_restarts_and_skips(ftp_root, caplog):
    caplog.set_level(logging.WARNING)
    with FtpTestServer(ftp_root[0], rest=False) as server, ftp_source(server) as source:
        server.drop_after(500_000)
        data = read_all(source, "BIBS_1_1.xml")
    assert server.drops == 1
    assert digest(data) == digest(ftp_root[1]["BIBS_1_1.xml"])
    assert any("does not support REST" in r.getMessage() for r in caplog.records)


def test_ftp_server_without_mlsd_lists_with_nlst_and_size(ftp_root):
    with FtpTestServer(ftp_root[0], mlsd=False) as server, ftp_source(server) as source:
        check_contract(source, ftp_root[1])


def test_ftp_bad_login_and_missing_folder(ftp):
    with pytest.raises(SourceError, match="login .* failed"):
        ftp_source(ftp, extra={"EXPORT_SOURCE_PASSWORD": "wrong"}).list()
    with pytest.raises(SourceFileNotFound, match="does not exist"):
        ftp_source(ftp, folder="/nope").list()


def test_ftp_file_that_disappears_between_list_and_open(ftp):
    path = ftp.root / "exports" / "gone.xml"
    path.write_bytes(b"x")
    with ftp_source(ftp) as source:
        assert "gone.xml" in {e.name for e in source.list()}
        path.unlink()
        with pytest.raises(SourceFileNotFound, match="gone.xml"):
            source.open("gone.xml")


@pytest.fixture(scope="module")
def ftps(ftp_root):
    with FtpTestServer(ftp_root[0], tls=True) as server:
        server.files = ftp_root[1]
        yield server


def test_ftps_with_verified_certificate(ftps, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ftps.ca_file))
    with ftp_source(ftps) as source:
        assert source.list()
        ftps.drop_after(400_000)
        assert digest(read_all(source, "BIBS_1_1.xml")) == digest(ftps.files["BIBS_1_1.xml"])
    assert ftps.drops == 1


def test_ftps_untrusted_certificate_is_refused_unless_insecure(ftps, caplog):
    with pytest.raises(SourceError, match="certificate"):
        ftp_source(ftps).list()
    caplog.set_level(logging.WARNING)
    with ftp_source(ftps, extra={"EXPORT_SOURCE_INSECURE": "true"}) as source:
        assert source.size("BIBS_1_2.xml") == 70_000
    assert any("NOT verifying the TLS certificate" in r.getMessage() for r in caplog.records)


# -- Azure blob (Azurite) -----------------------------------------------------------------------------


@pytest.fixture
def blob_container(azurite, unique_name, tmp_path):
    files = fill(tmp_path / "exports")
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container(unique_name)
    for name, data in files.items():
        container.upload_blob(f"alma/exports/{name}", data)
    container.upload_blob("alma/exports/sub/nested.xml", b"nested")
    container.upload_blob("alma/exportsX.xml", b"a neighbour with the same prefix")
    container.upload_blob("top.xml", b"top")
    yield unique_name, files, container
    service.delete_container(unique_name)


def test_blob_with_connection_string(blob_container, clean_env):
    name, files, _ = blob_container
    with open_source(f"blob://{name}/alma/exports") as source:  # default: AzureWebJobsStorage
        check_contract(source, files)
    with open_source(f"blob://{name}") as source:
        assert [e.name for e in source.list()] == ["top.xml"]


def test_blob_explicit_connection_and_missing_settings(blob_container, clean_env, azurite):
    name, files, _ = blob_container
    env = {"EXPORT_SOURCE_CONNECTION": azurite.connection_string}
    with open_source(f"blob://{name}/alma/exports/", env) as source:
        assert source.size("BIBS_1_2.xml") == 70_000
    with pytest.raises(SettingError, match="EXPORT_SOURCE_CONNECTION"):
        open_source(f"blob://{name}/x", {})
    with pytest.raises(SettingError, match="EXPORT_SOURCE_CONNECTION: is not a valid"):
        open_source(f"blob://{name}/x", {"EXPORT_SOURCE_CONNECTION": "not a connection string"})
    with pytest.raises(SourceFileNotFound, match="container"):
        open_source(f"blob://{name}-nope/x", env).list()
    from pipeline.dev.azurite import KEY

    wrong = {"EXPORT_SOURCE_CONNECTION": azurite.connection_string.replace(KEY, "d3Jvbmc=" * 11)}
    with pytest.raises(SourceError, match="cannot list") as err:
        open_source(f"blob://{name}/alma/exports", wrong).list()
    assert not isinstance(err.value, SourceFileNotFound)


def test_blob_that_disappears_or_changes_while_read(blob_container, clean_env):
    name, files, container = blob_container
    with BlobSource.from_url(f"blob://{name}/alma/exports", chunk_size=64 * 1024) as source:
        assert "BIBS_1_2.xml" in {e.name for e in source.list()}
        container.delete_blob("alma/exports/BIBS_1_2.xml")
        with pytest.raises(SourceFileNotFound, match="BIBS_1_2.xml"):
            source.open("BIBS_1_2.xml")
        with source.open("BIBS_1_1.xml") as fh:
            first = fh.read(1000)
            container.upload_blob("alma/exports/BIBS_1_1.xml", b"replaced", overwrite=True)
            with pytest.raises(SourceError, match="replaced"):
                while fh.read(65536):
                    pass
        assert first == files["BIBS_1_1.xml"][:1000]


class DroppingProxy:
    """A TCP forwarder that cuts the first connection after `limit` bytes from the server."""

    def __init__(self, port: int, limit: int) -> None:
        self.target, self.limit, self.cuts = port, limit, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            cut = self.cuts == 0 and self.limit is not None
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.limit if cut else None),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_blob_connection_dropped_mid_download_resumes(blob_container, clean_env, azurite):
    name, files, _ = blob_container
    proxy = DroppingProxy(azurite.blob_port, 900_000)
    try:
        conn = azurite.connection_string.replace(f"127.0.0.1:{azurite.blob_port}", f"127.0.0.1:{proxy.port}")
        with open_source(f"blob://{name}/alma/exports", {"EXPORT_SOURCE_CONNECTION": conn}) as source:
            data = read_all(source, "BIBS_1_1.xml")
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert digest(data) == digest(files["BIBS_1_1.xml"])


def test_blob_https_url_uses_the_account_endpoint():
    source = BlobSource.from_url("https://myacct.blob.core.windows.net/alma-exports/daily/bibs")
    assert source.location == "https://myacct.blob.core.windows.net/alma-exports/daily/bibs"
    assert source.prefix == "daily/bibs"
    assert source._container.url.startswith("https://myacct.blob.core.windows.net/alma-exports")
    with pytest.raises(SettingError, match="names no container"):
        BlobSource.from_url("https://myacct.blob.core.windows.net/")
    # blob:// with identity-based app storage (no connection string) uses that account
    source = BlobSource.from_url("blob://exports/alma", {"AzureWebJobsStorage__accountName": "appstore"})
    assert source._container.url.startswith("https://appstore.blob.core.windows.net/exports")
