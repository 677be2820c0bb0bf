"""The ``Host`` allow-list of every HTTP endpoint of the package (DNS rebinding).

A web page on another origin can rebind its own name to 127.0.0.1 and then read
a loopback server as if it were same-origin; what it cannot change is the
``Host`` header its requests carry (its own name). So a server that answers
only the names it is really known by is out of that page's reach.

No third-party import here: :mod:`purpose_bus.web` and :mod:`purpose_bus.agui`
wrap their applications in :class:`HostCheck`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["LOOPBACK_HOSTS", "HostCheck", "host_name"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The names a loopback server is always known by.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: ``allowed_hosts=["*"]`` turns the check off (behind a proxy that checks it).
ANY_HOST = "*"
_MAX_HOST = 255


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header value (or an allow-list entry), normalised
    for comparison: the port removed, IPv6 brackets removed, lower case, one
    trailing dot removed, IP addresses in their canonical form. ``None`` if it is
    not a host name or address (empty, spaces, unbalanced brackets, a bad port).
    """
    if not value or len(value) > _MAX_HOST or not value.isascii():
        return None
    if any(c.isspace() or c in "/\\@?#" for c in value):
        return None
    if value.startswith("["):  # [v6] or [v6]:port
        end = value.find("]")
        if end < 0 or not _port_ok(value[end + 1 :]):
            return None
        return _canonical_ip(value[1:end], v6=True)
    if value.count(":") > 1:  # a bare IPv6 address (allow-list entries)
        return _canonical_ip(value, v6=True)
    name, colon, port = value.partition(":")
    if colon and not _port_ok(":" + port):
        return None
    name = name.lower().removesuffix(".")
    if not name or "[" in name or "]" in name:
        return None
    address = _canonical_ip(name, v6=False)
    return address if address is not None else name


def _port_ok(rest: str) -> bool:
    if rest == "":
        return True
    port = rest[1:]
    return rest[0] == ":" and port.isdigit() and len(port) <= 5 and int(port) < 65536


def _canonical_ip(text: str, *, v6: bool) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if v6 and address.version != 6:
        return None
    return address.compressed


def allowed_set(allowed_hosts: Iterable[str] | None) -> frozenset[str] | None:
    """The normalised allow-list; ``None`` for the default (loopback names plus
    the address the request reached); a set holding ``"*"`` allows any host.

    :raises ValueError: for an entry that is not a host name or address
    :raises TypeError: for a single string (a common slip for ``[name]``)
    """
    if allowed_hosts is None:
        return None
    if isinstance(allowed_hosts, str):
        raise TypeError(
            f"allowed_hosts must be a collection of names, not the string "
            f"{allowed_hosts!r} (write [{allowed_hosts!r}])"
        )
    names = set()
    for entry in allowed_hosts:
        if entry == ANY_HOST:
            names.add(ANY_HOST)
            continue
        name = host_name(entry) if isinstance(entry, str) else None
        if name is None:
            raise ValueError(f"allowed_hosts: {entry!r} is not a host name or address")
        names.add(name)
    return frozenset(names)


class HostCheck:
    """ASGI middleware: an HTTP request whose ``Host`` header is missing, given
    more than once, malformed, or not on the allow-list gets ``400 Bad Request``
    with a plain-text reason, and never reaches *app*. Other scopes (lifespan)
    pass through; the package serves no websockets.

    The default allow-list is :data:`LOOPBACK_HOSTS` plus the address the
    request reached the server on (the ASGI ``server`` of the scope: the address
    the server is bound to, or the local address of the connection when bound
    to all interfaces). Pass *allowed_hosts* (names or addresses, without
    ports) for a real deployment; ``["*"]`` allows any host (only behind a proxy
    that checks it).
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None):
        self.app = app
        self.allowed = allowed_set(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = self._refusal(scope)
            if reason is not None:
                await _bad_request(send, reason)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"host"]
        if not values:
            return "the Host header is missing"
        if len(values) > 1:
            return "the Host header is given more than once"
        try:
            text = bytes(values[0]).decode("ascii")
        except UnicodeDecodeError:
            return "the Host header is not ASCII"
        name = host_name(text)
        if name is None:
            return f"the Host header {_short(text)} is not a host name"
        if self._allows(name, scope):
            return None
        return (
            f"the host {_short(name)} is not allowed here (a DNS rebinding "
            f"guard); the server answers to: {', '.join(sorted(self._names(scope)))}"
        )

    def _allows(self, name: str, scope: Scope) -> bool:
        return ANY_HOST in self._names(scope) or name in self._names(scope)

    def _names(self, scope: Scope) -> frozenset[str]:
        if self.allowed is not None:
            return self.allowed
        server = scope.get("server")
        bound = host_name(str(server[0])) if server else None
        return LOOPBACK_HOSTS | {bound} if bound else LOOPBACK_HOSTS


async def _bad_request(send: Send, reason: str) -> None:
    body = f"bad request: {reason}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _short(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
