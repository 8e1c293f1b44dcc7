"""A stand-in for a `tachyon serve` instance, in a thread on 127.0.0.1: it records each POST and
answers as the test says (a JSON body, an SSE stream that may break off, an error status). It lets
the tests pin the router's side of the prefill/decode contract and its handling of failures that real
instances cannot be made to produce on cue (a stream dying before its first event, a dropped connection,
a 502); tests/distributed kills and stalls real instances."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: dict = field(default_factory=lambda: completion("fake"))  # a JSON answer, unless events
    events: list[dict] | None = None  # SSE payloads, then [DONE] unless break_stream
    break_stream: bool = False  # drop the connection after the events: an instance that died
    drop: bool = False  # drop the connection without answering at all


def completion(text: str, **top_level) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
    return {"id": "cmpl-fake", "object": "text_completion", "model": "fake", "choices": [choice], **top_level}


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: dict


class FakeInstance:
    def __init__(self, reply: Reply | None = None, num_waiting: int = 0) -> None:
        self.reply = reply or Reply()
        self.num_waiting = num_waiting  # its /metrics' tachyon:num_requests_waiting
        self.health_status = 200  # GET /health's
        self.received: list[Received] = []
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeInstance

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/metrics":
            gauge = f'tachyon:num_requests_waiting{{model_name="fake"}} {float(self.fake.num_waiting)}\n'
            self._send(200, gauge.encode(), "text/plain")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": "fake"}]}).encode(), "application/json")
        else:
            self._send(self.fake.health_status, b"", "text/plain")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.fake.received.append(Received(self.path, headers, body))
        reply = self.fake.reply
        if reply.drop:
            self._drop()
        elif reply.events is None:
            self._send(reply.status, json.dumps(reply.body).encode(), "application/json")
        else:
            self._stream(reply)

    def _stream(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        payloads = [json.dumps(e) for e in reply.events] + ([] if reply.break_stream else ["[DONE]"])
        for payload in payloads:
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if reply.break_stream:  # no terminating chunk: the client sees a body cut short
            self._drop()
        else:
            self.wfile.write(b"0\r\n\r\n")

    def _drop(self) -> None:
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("connection", "close")  # no kept-alive connection outlives close()
        self.end_headers()
        self.wfile.write(data)
