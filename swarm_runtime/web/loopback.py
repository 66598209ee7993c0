"""Loopback checks shared by both servers, the worker and the provider client.

A URL is judged by the parser that sends it: requests hands every URL to urllib3's
`parse_url`, so `loopback_url` does too, and gives back the URL as that parser rebuilt it,
for the caller to send. What `urllib.parse` and urllib3 may read differently is refused
rather than interpreted: a backslash, userinfo (`@`), percent-encoding (urllib3 decodes it
in the host), a query or fragment (a base URL has none), whitespace, control characters and
anything outside printable ASCII. Each loopback host is accepted in one spelling only,
`localhost`, `[::1]` or a dotted quad 127.x.y.z without leading zeros, so that no inet_aton
shorthand (`127.1`, `0x7f.1`, `2130706433`), IPv4-mapped address (`[::ffff:127.0.0.1]`
reaches loopback only where the stack is dual), trailing dot or IDNA mapping decides where
the request goes.
"""

from __future__ import annotations

import ipaddress

import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

_AMBIGUOUS = frozenset("\\@?#%")
_LITERAL_NAMES = ("localhost", "[::1]")


def is_loopback_address(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; names other than localhost are not.

    This judges a socket peer's address; a URL to send to is judged by `loopback_url`."""
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped and mapped.is_loopback))


def loopback_url(url: str) -> str | None:
    """The URL to send if it can only reach this machine, else None."""
    if not url.isascii() or not url.isprintable() or " " in url or _AMBIGUOUS & set(url):
        return None
    try:
        parts = parse_url(url)
    except LocationParseError:
        return None
    if parts.scheme not in ("http", "https") or not _is_literal_loopback(parts.host):
        return None
    return str(parts.url)


def direct_session(session: requests.Session | None = None) -> requests.Session:
    """A session that ignores HTTP(S)_PROXY, ALL_PROXY and .netrc, so that loopback traffic,
    and the token or key it carries, reaches the socket and no proxy."""
    session = session or requests.Session()
    session.trust_env = False
    return session


def _is_literal_loopback(host: str | None) -> bool:
    if host in _LITERAL_NAMES:
        return True
    try:
        address = ipaddress.IPv4Address(host or "")
    except ValueError:
        return False
    return address.is_loopback and str(address) == host
