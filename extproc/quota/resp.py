"""A lean Redis client for the quota scripts: EVALSHA over a few pipelined connections.

The quota store makes two script calls per request (admit, settle), and redis-py spends most
of its CPU per call in Python around the socket: argument encoding, command packing, the
connection pool, retries (`perf/README.md`). This client does only what those calls need,
for a single Redis node (``redis://``): commands are packed in one pass, replies
parsed by hiredis, and calls share a few connections, many in flight on each (Redis answers
in order). Sentinel, Cluster, TLS and Unix sockets keep using redis-py (``redis_client.client_from_url``).

Errors are redis-py's exception types, so the store's timeout, breaker and failure modes see
no difference: a lost connection fails every call waiting on it with ``ConnectionError`` and
the next call reconnects; a reply error is a ``ResponseError``; NOSCRIPT loads the script
and calls again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import parse_url

#: Connections per process: enough to spread the load of one event loop, few for Redis.
CONNECTIONS = 4


def supports(url: str) -> bool:
    """A URL this client can serve: a single node over TCP, without TLS."""
    return urlsplit(url).scheme == "redis"


def _pack(args: tuple[bytes | str, ...]) -> bytes:
    """A RESP array of bulk strings. Lengths are in bytes: all-ASCII text (the usual case: keys,
    numbers, ids) is packed as one string and encoded once, anything else argument by argument."""
    if all(type(arg) is str for arg in args):
        text = "".join([f"${len(arg)}\r\n{arg}\r\n" for arg in cast(tuple[str, ...], args)])
        if text.isascii():
            return f"*{len(args)}\r\n{text}".encode()
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


#: A connection whose oldest unanswered call is this old is dead (a host gone without a reset,
#: an expired NAT entry): closed, so its calls fail now and the next ones reconnect.
STALE_S = 2.0


class _Connection(asyncio.Protocol):
    """One socket; replies resolve the waiting calls in the order they were sent."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.sent_at: deque[float] = deque()
        #: Commands sent in this turn of the event loop, written together at its end.
        self.unwritten: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:
                continue  # unsolicited (an error Redis sends before it closes): nobody asked
            future = self.waiting.popleft()
            self.sent_at.popleft()
            if not future.done():  # a caller that timed out leaves its future cancelled
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(redis_errors.ResponseError(str(reply)))
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.unwritten.clear()
        error = redis_errors.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        self.sent_at.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def stale(self, now: float) -> bool:
        return bool(self.sent_at) and now - self.sent_at[0] > STALE_S

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise redis_errors.ConnectionError("connection to Redis closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append(future)
        self.sent_at.append(loop.time())
        # One write (one syscall, one read for Redis) for every call made in this turn of the
        # loop: with many requests in flight, their commands leave together.
        if not self.unwritten:
            loop.call_soon(self._write)
        self.unwritten.append(packed)
        return future

    def _write(self) -> None:
        data = b"".join(self.unwritten)
        self.unwritten.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class LeanRedis:
    """Just enough of a Redis client for ``RedisQuotaStore``: ``register_script``, ``aclose``."""

    def __init__(self, url: str, connect_timeout_s: float, connections: int = CONNECTIONS) -> None:
        parts = parse_url(url)  # redis-py's own reading of a redis:// URL
        self._host, self._port = parts.get("host") or "127.0.0.1", parts.get("port") or 6379
        self._password, self._username = parts.get("password"), parts.get("username")
        self._db = parts.get("db") or 0
        self._connect_timeout = connect_timeout_s
        self._slots: list[_Connection | None] = [None] * connections
        self._connecting: list[asyncio.Future[_Connection] | None] = [None] * connections
        self._next = 0
        self._closed = False

    def register_script(self, source: str) -> LeanScript:
        return LeanScript(self, source)

    async def execute(self, *args: bytes | str) -> Any:
        i = self._next
        self._next = (i + 1) % len(self._slots)
        conn = self._slots[i]
        if conn is not None and conn.stale(asyncio.get_running_loop().time()):
            assert conn.transport is not None
            conn.transport.abort()  # fails its waiting calls; this one gets a new connection
            conn.closed = True
        if conn is None or conn.closed:
            conn = await self._connect(i)
        return await conn.send(_pack(args))

    async def _connect(self, i: int) -> _Connection:
        """One connection attempt per slot at a time; concurrent callers share it."""
        pending = self._connecting[i]
        if pending is None:
            pending = self._connecting[i] = asyncio.ensure_future(self._open_slot(i))
            pending.add_done_callback(lambda f: self._connected(i, f))
        return await asyncio.shield(pending)

    def _connected(self, i: int, attempt: asyncio.Future[_Connection]) -> None:
        self._connecting[i] = None
        if not attempt.cancelled():
            attempt.exception()  # retrieved: every waiter may have given up already

    async def _open_slot(self, i: int) -> _Connection:
        """Open a connection and publish it in its slot, before any waiter resumes."""
        conn = await self._open()
        if self._closed:
            assert conn.transport is not None
            conn.transport.close()
            raise redis_errors.ConnectionError("client closed")
        self._slots[i] = conn
        return conn

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(_Connection, self._host, self._port)
                try:
                    if self._password:
                        user = (self._username,) if self._username else ()
                        await conn.send(_pack(("AUTH", *user, self._password)))
                    if self._db:
                        await conn.send(_pack(("SELECT", str(self._db))))
                except BaseException:
                    assert conn.transport is not None
                    conn.transport.close()  # refused (wrong password…) or timed out: not kept
                    raise
        except (OSError, TimeoutError) as exc:
            raise redis_errors.ConnectionError(f"cannot connect to Redis: {exc}") from exc
        return conn

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._slots:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        self._slots = [None] * len(self._slots)


class LeanScript:
    """A Lua script called by SHA (``EVALSHA``), loaded again after a Redis restart or flush."""

    def __init__(self, client: LeanRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[str]) -> Any:
        command = ("EVALSHA", self.sha, str(len(keys)), *keys, *args)
        try:
            return await self.client.execute(*command)
        except redis_errors.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.client.execute("SCRIPT", "LOAD", self.source)
        return await self.client.execute(*command)
