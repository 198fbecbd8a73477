"""The lean Redis client's command packing: lengths in bytes, whatever the arguments are."""

from __future__ import annotations

import hiredis

from extproc.quota.resp import _pack


def _unpack(packed: bytes) -> list[bytes]:
    """What Redis reads: a RESP array of bulk strings parses back the same way a reply would."""
    reader = hiredis.Reader()
    reader.feed(packed)
    command = reader.gets()
    assert reader.gets() is False  # nothing left over: the lengths were right
    return command  # type: ignore[no-any-return]


def test_packs_text_bytes_and_non_ascii_with_byte_lengths() -> None:
    assert _pack(("EVALSHA", "ab", "1")) == b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n"
    for args in (("SET", "k", "é€𝄞"), ("HSET", "k", "d", b"\x00\xff\r\n"), ("ECHO", ""),
                 ("ECHO", "a\r\nb"), ("XADD", "s", "*", "t", "tenant-ü", "r", b"bytes")):
        assert _unpack(_pack(args)) == [a.encode() if isinstance(a, str) else a for a in args]
