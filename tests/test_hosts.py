"""Tests of the ``Host`` allow-list (:mod:`purpose_bus._hosts`), on the SSE app of
:mod:`purpose_bus.web` (the AG-UI app is tested alike in ``test_agui.py``): a web
page that rebinds its own name to 127.0.0.1 gets ``400``, never the stream."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import anyio
import pytest
from helpers import http_scope
from hypercorn.config import Config
from starlette.types import Message, Scope

from purpose_bus import EventBus
from purpose_bus._hosts import HostCheck, host_name
from purpose_bus.web import create_app, serve


async def call(
    app: HostCheck | object,
    host: bytes | list[bytes] | None,
    server: tuple[str, int] | None = ("127.0.0.1", 8000),
    path: str = "/kinds",
) -> tuple[int, bytes, dict[str, str]]:
    """One request straight to the ASGI *app*; returns status, body, headers."""
    hosts = [] if host is None else [host] if isinstance(host, bytes) else host
    scope: Scope = http_scope(path, hosts, server)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[operator]
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], body, headers


def web_app(allowed_hosts: Iterable[str] | None = None) -> object:
    return create_app(EventBus(), allowed_hosts=allowed_hosts)


class TestHostName:
    @pytest.mark.parametrize(
        ("value", "name"),
        [
            ("localhost", "localhost"),
            ("LocalHost:8000", "localhost"),
            ("localhost.", "localhost"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "::1"),
            ("[::1]:8000", "::1"),
            ("[0:0:0:0:0:0:0:1]:1", "::1"),
            ("::1", "::1"),
            ("Example.COM", "example.com"),
        ],
    )
    def test_normalised(self, value: str, name: str) -> None:
        assert host_name(value) == name

    @pytest.mark.parametrize(
        "value",
        [
            "",
            ":80",
            "a b",
            "[::1",
            "[::1]x",
            "[127.0.0.1]",
            "[nonsense]",
            "localhost:http",
            "localhost:99999",
            "localhost:1:2x",
            "user@localhost",
            "localhost/x",
            "é.example",
            "x" * 300,
        ],
    )
    def test_refused(self, value: str) -> None:
        assert host_name(value) is None


class TestHostCheck:
    @pytest.mark.parametrize(
        "host", [b"127.0.0.1:8000", b"localhost", b"LOCALHOST:8000", b"[::1]:8000"]
    )
    async def test_loopback_names_are_allowed(self, host: bytes) -> None:
        status, _, _ = await call(web_app(), host)
        assert status == 200

    async def test_the_bound_address_is_allowed(self) -> None:
        status, _, _ = await call(web_app(), b"192.0.2.7:8000", ("192.0.2.7", 8000))
        assert status == 200

    async def test_a_rebinding_name_is_refused(self) -> None:
        status, body, headers = await call(web_app(), b"evil.example:8000")
        assert status == 400
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert body.startswith(b"bad request: the host 'evil.example' is not allowed")
        assert b"localhost" in body
        assert not any(name.startswith("access-control") for name in headers)

    async def test_the_stream_is_refused_too(self) -> None:
        status, _, _ = await call(web_app(), b"evil.example", path="/events")
        assert status == 400

    async def test_a_missing_host_is_refused(self) -> None:
        status, body, _ = await call(web_app(), None)
        assert (status, body) == (400, b"bad request: the Host header is missing\n")

    async def test_two_hosts_are_refused(self) -> None:
        status, body, _ = await call(web_app(), [b"localhost", b"evil.example"])
        assert status == 400
        assert b"more than once" in body

    @pytest.mark.parametrize("host", [b"", b"[::1", b"a b", b"\xff"])
    async def test_a_malformed_host_is_refused(self, host: bytes) -> None:
        status, _, _ = await call(web_app(), host)
        assert status == 400

    async def test_a_configured_host(self) -> None:
        app = web_app(["bus.example.org", "[2001:db8::1]"])
        assert (await call(app, b"bus.example.org:443"))[0] == 200
        assert (await call(app, b"[2001:db8:0::1]:80"))[0] == 200
        # The configured list replaces the default one.
        assert (await call(app, b"localhost"))[0] == 400

    async def test_any_host(self) -> None:
        assert (await call(web_app(["*"]), b"evil.example"))[0] == 200

    @pytest.mark.parametrize("entry", ["", "a b", "[::1", "localhost:x"])
    def test_bad_entries(self, entry: str) -> None:
        with pytest.raises(ValueError, match="allowed_hosts"):
            web_app([entry])

    def test_a_string_is_not_a_list(self) -> None:
        with pytest.raises(TypeError, match=r"write \['localhost'\]"):
            web_app("localhost")


class TestOverLoopback:
    async def raw(self, host: str, port: int, request: bytes) -> bytes:
        async with await anyio.connect_tcp(host, port) as connection:
            await connection.send(request)
            received = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in received:
                    received += await connection.receive()
        return received

    async def test_a_rebinding_page_gets_400(self) -> None:
        config = Config()
        config.errorlog = None
        stop = anyio.Event()
        async with EventBus() as bus, anyio.create_task_group() as task_group:
            host, port = await task_group.start(
                partial(
                    serve,
                    create_app(bus),
                    port=0,
                    shutdown_trigger=stop.wait,
                    config=config,
                )
            )
            evil = b"GET /events HTTP/1.1\r\nHost: evil.example:%d\r\n\r\n" % port
            assert (await self.raw(host, port, evil)).startswith(b"HTTP/1.1 400")
            good = b"GET /kinds HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % port
            assert (await self.raw(host, port, good)).startswith(b"HTTP/1.1 200")
            stop.set()
