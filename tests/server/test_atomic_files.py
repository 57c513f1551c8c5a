"""AtomicDirectory: the kubelet's ``..data`` layout, and readers that never see a torn certificate/key pair."""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kube_ip_tracker.server import atomic_files, bootstrap_pki
from kube_ip_tracker.server.atomic_files import DATA, AtomicDirectory
from kube_ip_tracker.server.tls import ReloadingTls
from kube_ip_tracker.tls_files import TlsConfigError, TlsFiles, load


def _pairs(count: int) -> list[bootstrap_pki.KeyPair]:
    return [bootstrap_pki.new_ca(f"version {i}", datetime.timedelta(days=1)) for i in range(count)]


def _files(pair: bootstrap_pki.KeyPair) -> dict[str, bytes]:
    return {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": pair.cert_pem}


def _versions(directory: Path) -> list[str]:
    return sorted(e.name for e in directory.iterdir() if e.name.startswith("..") and not e.is_symlink())


def _spki(key: x509.Certificate | object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_layout_links_through_data_and_an_unchanged_write_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    first, second = _pairs(2)
    files = AtomicDirectory(directory)
    assert files.write(_files(first)) == {"tls.crt", "tls.key", "ca.crt"}
    [version] = _versions(directory)
    assert os.readlink(directory / DATA) == version
    for name, content in _files(first).items():
        assert os.readlink(directory / name) == f"{DATA}/{name}"
        assert (directory / name).read_bytes() == content
        assert (directory / version / name).stat().st_mode & 0o777 == 0o600
    assert (directory / version).stat().st_mode & 0o777 == 0o700
    assert files.current() == _files(first)

    assert files.write(_files(first)) == frozenset()
    assert _versions(directory) == [version]

    # Only the bundle changes: one name reported, a new version, the old one removed.
    assert files.write({**_files(first), "ca.crt": second.cert_pem}) == {"ca.crt"}
    [newer] = _versions(directory)
    assert newer != version and os.readlink(directory / DATA) == newer
    # A name dropped from the payload loses its link; other entries of the directory stay.
    (directory / "README").write_text("mine")
    assert files.write({"tls.crt": second.cert_pem}) == {"tls.key", "ca.crt", "tls.crt"}
    assert sorted(e.name for e in directory.iterdir() if not e.name.startswith("..")) == ["README", "tls.crt"]


def test_regular_files_of_the_older_layout_become_links(tmp_path: Path) -> None:
    [pair] = _pairs(1)
    tmp_path.joinpath("tls.crt").write_bytes(b"old cert")
    tmp_path.joinpath("tls.key").write_bytes(b"old key")
    AtomicDirectory(tmp_path).write(_files(pair))
    for name in ("tls.crt", "tls.key", "ca.crt"):
        assert (tmp_path / name).is_symlink() and (tmp_path / name).read_bytes() == _files(pair)[name]


def test_a_failed_write_keeps_the_current_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _pairs(2)
    files = AtomicDirectory(tmp_path)
    files.write(_files(first))
    before = _versions(tmp_path)
    real = atomic_files._write_file

    def failing(path: Path, content: bytes) -> None:
        if path.name == "tls.key":
            raise OSError(28, "No space left on device")
        real(path, content)

    monkeypatch.setattr(atomic_files, "_write_file", failing)
    with pytest.raises(OSError, match="No space"):
        files.write(_files(second))
    assert files.current() == _files(first) and _versions(tmp_path) == before
    assert (tmp_path / "tls.crt").read_bytes() == first.cert_pem


@pytest.mark.parametrize("name", ["", "a/b", "..data", "..hidden"])
def test_names_that_are_not_plain_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="must be a plain file name"):
        AtomicDirectory(tmp_path).write({name: b"x"})


def test_concurrent_reads_during_repeated_swaps_always_see_a_matching_pair(tmp_path: Path) -> None:
    """Two threads load the pair (as the server and clients do) while another publishes 200 versions.

    Both halves matter (measured while writing this test, 200 swaps, two readers): the bootstrap's
    former file-by-file writer gave 1412 mismatched loads of 4242, and this writer with a reader that
    opens the two names one after the other (without ``read_together``) 49 of 4243.
    """
    pairs = _pairs(5)
    directory = AtomicDirectory(tmp_path / "tls")
    directory.write(_files(pairs[0]))
    tls_files = TlsFiles(tmp_path / "tls" / "tls.crt", tmp_path / "tls" / "tls.key")
    done = threading.Event()
    torn: list[str] = []
    seen: set[bytes] = set()

    def read() -> None:
        while not done.is_set():
            try:
                loaded = load(tls_files)
            except TlsConfigError as e:
                torn.append(str(e))
                continue
            cert = x509.load_pem_x509_certificates(loaded.cert_chain)[0]
            key = serialization.load_pem_private_key(loaded.private_key, password=None)
            if _spki(cert) != _spki(key):
                torn.append(f"certificate {cert.subject.rfc4514_string()} with another key")
            seen.add(_spki(cert))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for i in range(1, 201):
            directory.write(_files(pairs[i % len(pairs)]))
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert not torn, torn[:3]
    assert len(seen) == len(pairs), "the readers saw only some versions: the swaps did not overlap the reads"
    assert len(_versions(tmp_path / "tls")) == 1


def test_the_server_reloader_picks_up_a_swap(tmp_path: Path) -> None:
    first, second = _pairs(2)
    directory = AtomicDirectory(tmp_path)
    directory.write(_files(first))
    tls = ReloadingTls(TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"))
    assert not tls.check()
    directory.write(_files(second))
    assert tls.check() and tls.reloads == 1
    assert tls._loaded.cert_chain == second.cert_pem and tls._loaded.client_ca == second.cert_pem
    assert not tls.check()
