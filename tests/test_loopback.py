"""`loopback_url` against URLs that urllib.parse, urllib3 and the resolver read differently:
each is refused, or requests itself sends it to a loopback address."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from urllib3.util import parse_url
from werkzeug.serving import make_server

from swarm_runtime.web.loopback import direct_session, loopback_url

# (URL, as it is to be sent); `{port}` is 8420 here and a live server's port below.
ACCEPTED = [
    ("http://127.0.0.1:{port}", "http://127.0.0.1:{port}"),
    ("http://127.0.0.1:{port}/v1/", "http://127.0.0.1:{port}/v1/"),
    ("http://127.8.9.10:{port}/v1", "http://127.8.9.10:{port}/v1"),
    ("http://127.255.255.254:{port}", "http://127.255.255.254:{port}"),
    ("http://localhost:{port}", "http://localhost:{port}"),
    ("HTTP://LOCALHOST:{port}/V1", "http://localhost:{port}/V1"),
    ("http://[::1]:{port}/v1", "http://[::1]:{port}/v1"),
    ("http://127.0.0.1:0{port}/", "http://127.0.0.1:{port}/"),
    ("https://localhost:{port}/v1", "https://localhost:{port}/v1"),
]

REFUSED = {
    "backslash before @": "http://evil.example\\@127.0.0.1/",
    "backslash in the path": "http://evil.example/\\@127.0.0.1",
    "userinfo naming loopback": "http://127.0.0.1@evil.example/",
    "userinfo with a port": "http://127.0.0.1:8420@evil.example/",
    "userinfo before loopback": "http://user:secret@127.0.0.1/",
    "encoded slash in userinfo": "http://127.0.0.1%2f@evil.example/",
    "fragment hiding @": "http://evil.example#@127.0.0.1/",
    "query hiding @": "http://evil.example?@127.0.0.1",
    "a query": "http://127.0.0.1:8420/?next=1",
    "percent-encoded host": "http://%31%32%37.0.0.1/",
    "tab in the host": "http://127.0.0.1\t/",
    "newline in the host": "http://127.0.\n0.1/",
    "CRLF in the path": "http://127.0.0.1/\r\nHost: evil.example",
    "NUL": "http://127.0.0.1\x00.evil.example/",
    "leading space": " http://127.0.0.1/",
    "trailing space": "http://127.0.0.1/ ",
    "loopback as a subdomain": "http://127.0.0.1.evil.example/",
    "localhost as a subdomain": "http://localhost.evil.example/",
    "trailing dot": "http://localhost./",
    "IPv4-mapped IPv6": "http://[::ffff:127.0.0.1]/",
    "uncompressed ::1": "http://[0:0:0:0:0:0:0:1]/",
    "IPv6 zone": "http://[::1%25lo]/",
    "decimal IPv4": "http://2130706433/",
    "hex IPv4": "http://0x7f000001/",
    "hex shorthand": "http://0x7f.1/",
    "octal IPv4": "http://017700000001/",
    "octal octet": "http://0177.0.0.1/",
    "leading zero": "http://127.0.0.01/",
    "short form": "http://127.1/",
    "fullwidth localhost (IDNA)": "http://ｌｏｃａｌｈｏｓｔ/",
    "Cyrillic o (IDNA)": "http://lоcalhost/",
    "punycode": "http://xn--localhost-.example/",
    "port out of range": "http://127.0.0.1:65536/",
    "two ports": "http://127.0.0.1:8420:8421/",
    "any address": "http://0.0.0.0:8420/",
    "IPv6 any address": "http://[::]:8420/",
    "private address": "http://10.0.0.1:8420",
    "remote name": "http://example.com",
    "no scheme": "127.0.0.1:8420",
    "scheme-relative": "//127.0.0.1/",
    "no host": "http:///127.0.0.1/",
    "no slashes": "http:127.0.0.1/",
    "file scheme": "file:///etc/passwd",
    "ftp scheme": "ftp://127.0.0.1/",
    "empty": "",
}


def sent_host(url: str) -> str | None:
    """The host requests really connects to for `url`."""
    return parse_url(requests.Request("GET", url).prepare().url).host


def is_loopback_host(host: str | None) -> bool:
    name = (host or "").strip("[]")
    return name == "localhost" or ipaddress.ip_address(name).is_loopback


@pytest.mark.parametrize(("url", "sent"), ACCEPTED)
def test_an_accepted_url_is_sent_as_checked_and_to_loopback(url: str, sent: str) -> None:
    url, sent = url.format(port=8420), sent.format(port=8420)
    assert loopback_url(url) == sent
    assert is_loopback_host(sent_host(url)) and is_loopback_host(sent_host(sent))
    assert loopback_url(sent) == sent


@pytest.mark.parametrize("url", REFUSED.values(), ids=REFUSED.keys())
def test_a_url_that_parsers_may_read_differently_is_refused(url: str) -> None:
    assert loopback_url(url) is None


def test_the_backslash_url_that_fooled_urlsplit_is_refused() -> None:
    """urlsplit read 127.0.0.1 where requests sends to evil.example, token and prompt."""
    url = REFUSED["backslash before @"]
    assert urlsplit(url).hostname == "127.0.0.1"
    assert sent_host(url) == "evil.example"
    assert loopback_url(url) is None


class Landing:
    """A server on one loopback address that records the path of each request landing on it."""

    def __init__(self, host: str) -> None:
        self.landed: list[str] = []
        self.server = make_server(host, 0, self.app)
        self.port = self.server.server_port

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.landed.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.fixture
def landing() -> Iterator[Callable[[str], Landing]]:
    started: list[Landing] = []

    def start(host: str) -> Landing:
        try:
            server = Landing(host)
        except OSError as exc:
            pytest.skip(f"cannot listen on {host}: {exc}")
        threading.Thread(target=server.server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.server.shutdown()


@pytest.mark.parametrize(
    ("url", "sent"), [case for case in ACCEPTED if case[0].lower().startswith("http:")]
)
def test_every_accepted_url_lands_on_loopback(
    url: str, sent: str, landing: Callable[[str], Landing]
) -> None:
    """Sent for real, both as given and as checked, on a session no proxy can intercept."""
    host = parse_url(sent.format(port=1)).host or ""
    server = landing({"localhost": "127.0.0.1", "[::1]": "::1"}.get(host, host))
    url = url.format(port=server.port)
    with direct_session() as session:
        for target in (url, loopback_url(url) or "refused"):
            assert session.get(target, timeout=2).text == "ok"
    assert len(server.landed) == 2
