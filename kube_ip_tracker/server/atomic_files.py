"""Files that change together, published as one version: the kubelet's AtomicWriter layout.

``AtomicDirectory(path).write({"tls.crt": cert, "tls.key": key})`` leaves::

    path/..2026_12_02_18_40_01.k3j9x2/tls.crt    the version's files (directory 0700, files 0600)
    path/..data -> ..2026_12_02_18_40_01.k3j9x2  the current version
    path/tls.crt -> ..data/tls.crt               the names readers open

A new version is a new timestamped directory holding every file, made current by renaming a
symlink over ``..data`` (one atomic ``rename``); the previous directories are removed afterwards.
A reader that resolves ``..data`` once (or checks, as :func:`kube_ip_tracker.tls_files.load` does,
that no name changed its target while it read) thus never combines files of two versions, such as a
new certificate with the old key. Kubernetes' Secret and ConfigMap volumes look the same, so readers
treat both alike.

One writer per directory (the tracker's TLS bootstrap); other entries of the directory are left alone.
Regular files of the same names (an older layout) are replaced by the symlinks. Nothing is fsynced,
as the kubelet does not either: the atomicity is for concurrent readers, and the bootstrap's files
are derived state, compared with the Secret and rewritten on the tracker's first pass after a crash.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from kube_ip_tracker.tls_files import DATA_LINK as DATA

#: The version directories this module makes (``..YYYY_MM_DD_HH_MM_SS.random``), the only ones it removes.
_VERSION = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\..+$")


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("..") or name in (".", DATA):
        raise ValueError(f"atomic file name {name!r}: must be a plain file name not starting with '..'")


def _write_file(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def _replace_symlink(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` with one rename (over a file, a symlink or nothing)."""
    tmp = link.with_name(f"{link.name}.tmp-link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


class AtomicDirectory:
    """A directory whose files are replaced all at once; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def current(self) -> dict[str, bytes]:
        """The files of the current version ({} when there is none yet)."""
        try:
            version = self.path / os.readlink(self.path / DATA)
            return {entry.name: entry.read_bytes() for entry in version.iterdir() if entry.is_file()}
        except FileNotFoundError:
            return {}

    def write(self, files: Mapping[str, bytes]) -> frozenset[str]:
        """Publish ``files`` as the new version; the names whose content changed (none: nothing written).

        ``ValueError`` for a name that is not a plain file name; ``OSError`` when the directory cannot be
        written (the previous version then stays current).
        """
        for name in files:
            _check_name(name)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        before = self.current()
        changed = frozenset(n for n in files.keys() | before.keys() if files.get(n) != before.get(n))
        if not changed:
            self._link_names(files)  # a crash between the swap and the links leaves them missing
            return changed
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        version = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=self.path))  # 0700
        try:
            for name, content in files.items():
                _write_file(version / name, content)
            _replace_symlink(self.path / DATA, version.name)  # the swap
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
        self._link_names(files)
        self._remove_stale(files, keep=version.name)
        return changed

    def _link_names(self, files: Mapping[str, bytes]) -> None:
        for name in files:
            link, target = self.path / name, f"{DATA}/{name}"
            if not (link.is_symlink() and os.readlink(link) == target):
                _replace_symlink(link, target)

    def _remove_stale(self, files: Mapping[str, bytes], keep: str) -> None:
        """Remove earlier versions and the links of names the new version no longer has."""
        for entry in self.path.iterdir():
            if entry.is_symlink():
                if entry.name not in files and os.readlink(entry) == f"{DATA}/{entry.name}":
                    entry.unlink()
            elif entry.name != keep and entry.is_dir() and _VERSION.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
