"""One kept-alive connection for the requests of one exchange with the centre."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdbox.centre.client import CentreConnection
from sdbox.centre.errors import CentreRefused, CentreUnreachable


class _Server(ThreadingHTTPServer):
    connections = 0

    def get_request(self):  # type: ignore[no-untyped-def]
        self.connections += 1
        return super().get_request()


@pytest.fixture
def centre() -> Iterator[_Server]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = 403 if self.path == "/v1/refuse" else 200
            answer = {"error": "box_identity", "message": "no"} if status == 403 else {"echo": body}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            if self.path == "/v1/last":
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_requests_of_one_exchange_share_one_connection(centre: _Server) -> None:
    url = f"http://127.0.0.1:{centre.server_address[1]}"
    with CentreConnection(url, None, 5) as connection:
        assert connection.post("/v1/challenge", {"n": 1}) == {"echo": {"n": 1}}
        assert connection.post("/v1/credential", {"n": 2}) == {"echo": {"n": 2}}
        assert connection.post("/v1/last", {"n": 3}) == {"echo": {"n": 3}}  # the server closes
        assert connection.post("/v1/again", {"n": 4}) == {"echo": {"n": 4}}  # a new connection
    assert centre.connections == 2


def test_a_refusal_keeps_its_code_and_an_absent_centre_is_unreachable(centre: _Server) -> None:
    url = f"http://127.0.0.1:{centre.server_address[1]}"
    with CentreConnection(url, None, 5) as connection, pytest.raises(CentreRefused) as refused:
        connection.post("/v1/refuse", {})
    assert refused.value.code == "box_identity"
    with CentreConnection("http://127.0.0.1:9", None, 5) as connection, pytest.raises(
        CentreUnreachable, match="cannot be reached"
    ):
        connection.post("/v1/challenge", {})
