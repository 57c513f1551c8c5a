"""nft commands run in-process through libnftables (the library the ``nft`` tool is built on).

For the few commands that must run synchronously on the packet path's event loop (flushing the
verdict cache in the same turn as a state change, ~70 us) or often (metrics scrapes), where a
subprocess would cost milliseconds and an await. Everything else keeps using the ``nft`` tool.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

from .errors import DataplaneError

_OUTPUT_JSON = 1 << 4


class NftError(DataplaneError):
    """libnftables is unavailable, or rejected a command (the message has its error output)."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise NftError(f"cannot load libnftables ({name}): {exc}; install the nftables package") from exc
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    for fn in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
        fn.argtypes = [ctypes.c_void_p]
    for fn in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = ctypes.c_char_p
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    return lib


class Nft:
    """One libnftables context; :meth:`run` is safe to call from several threads (serialised)."""

    _lib: ctypes.CDLL | None = None

    def __init__(self) -> None:
        if Nft._lib is None:
            Nft._lib = _load()
        self._ctx = Nft._lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        Nft._lib.nft_ctx_buffer_output(self._ctx)
        Nft._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, commands: str, as_json: bool = False) -> str:
        """Run ``commands`` (one transaction); their output, parsed as nft's JSON listing if ``as_json``."""
        lib = Nft._lib
        assert lib is not None
        with self._lock:
            if self._ctx is None:
                raise NftError("nft context closed")
            lib.nft_ctx_output_set_flags(self._ctx, _OUTPUT_JSON if as_json else 0)
            rc = lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            first = commands.strip().splitlines()[0] if commands.strip() else ""
            raise NftError(f"nft {first!r}: {err.strip() or f'failed ({rc})'}")
        return out

    def listing(self, command: str) -> list[dict[str, Any]]:
        """The ``nftables`` items of a JSON listing command (``list set ...``)."""
        try:
            items = json.loads(self.run(command, as_json=True) or "{}").get("nftables", [])
        except ValueError as exc:
            raise NftError(f"nft {command!r}: unreadable JSON output: {exc}") from exc
        return [item for item in items if isinstance(item, dict)]

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None and Nft._lib is not None:
                Nft._lib.nft_ctx_free(self._ctx)
            self._ctx = None
