"""dindind.download: every way a download fails is one InputError, bounded retries, nothing cached.

Each failure shape is a tiny TCP server on 127.0.0.1 that misbehaves in one
way; the tests count its connections to check how often the client tried.
"""

import hashlib
import socket
import socketserver
import ssl
import struct
import subprocess
import threading

import pytest

from dindind.base import download
from dindind.base.errors import InputError

BODY = b"dindind " * 4096
SHA = hashlib.sha256(BODY).hexdigest()
KEY = "kubernetes.server_url"


class Server:
    """A TCP server on 127.0.0.1 handing connection n (from 1) to ``handle(sock, n, stop)``."""

    def __init__(self, handle, wrap=None):
        self.connections = 0
        self.stop = threading.Event()
        lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with lock:
                    outer.connections += 1
                    n = outer.connections
                sock = self.request
                try:
                    if wrap:
                        sock = wrap(sock)
                    handle(sock, n, outer.stop)
                except OSError:
                    pass

        class TCP(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False

        self.tcp = TCP(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.tcp.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, scheme="http", path="/kubernetes-server.tar.gz"):
        return f"{scheme}://127.0.0.1:{self.tcp.server_address[1]}{path}"

    def close(self):
        self.stop.set()
        self.tcp.shutdown()
        self.tcp.server_close()
        self.thread.join(10)


@pytest.fixture
def serve():
    servers = []

    def start(handle, wrap=None):
        servers.append(Server(handle, wrap))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def read_request(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def wait_closed(sock, stop):
    """Block until the client closes the connection (or the test ends)."""
    sock.settimeout(0.05)
    while not stop.is_set():
        try:
            if not sock.recv(65536):
                return
        except TimeoutError:
            continue


def head(length=len(BODY), status="200 OK"):
    return f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()


def ok(sock, n, stop):
    read_request(sock)
    sock.sendall(head() + BODY)


class Sleeps(list):
    """An injected sleep: records the backoff instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


def limits(sleeps, **kw):
    return download.Limits(sleep=sleeps, **kw)


def fail(url, tmp_path, lim):
    """The rendered InputError of downloading ``url``; the cache folder is left empty."""
    cache = tmp_path / "cache" / "downloads"
    with pytest.raises(InputError) as info:
        download.cached(url, SHA, cache / f"{SHA}.tar.gz", KEY, lim)
    assert list(cache.iterdir()) == [], "a partial download was left in the cache"
    err = info.value
    assert url in err.message and err.hint and KEY in err.hint
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return str(err)                                 # the message and the hint, as printed


# ---------------------------------------------------------------- success, retries

def test_download_verifies_and_caches(tmp_path, serve):
    srv = serve(ok)
    dest = tmp_path / "cache" / f"{SHA}.tar.gz"
    assert download.cached(srv.url(), SHA, dest, KEY, limits(Sleeps())) == dest
    assert dest.read_bytes() == BODY
    assert download.cached(srv.url(), SHA, dest, KEY, limits(Sleeps())) == dest
    assert srv.connections == 1                     # a verified cache hit makes no request


@pytest.mark.parametrize("status", ["503 Service Unavailable", "500 Internal Server Error", "429 Too Many Requests"])
def test_transient_http_errors_are_tried_again(tmp_path, serve, status):
    def flaky(sock, n, stop):
        read_request(sock)
        sock.sendall(head(0, status) if n < 3 else head() + BODY)

    srv, sleeps = serve(flaky), Sleeps()
    dest = tmp_path / "cache" / f"{SHA}.tar.gz"
    assert download.cached(srv.url(), SHA, dest, KEY, limits(sleeps)).read_bytes() == BODY
    assert srv.connections == 3 and sleeps == [1, 2]
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_a_truncated_attempt_then_a_good_one(tmp_path, serve):
    def flaky(sock, n, stop):
        read_request(sock)
        sock.sendall(head() + (BODY[:1000] if n == 1 else BODY))

    srv, sleeps = serve(flaky), Sleeps()
    dest = tmp_path / "cache" / f"{SHA}.tar.gz"
    assert download.cached(srv.url(), SHA, dest, KEY, limits(sleeps)).read_bytes() == BODY
    assert srv.connections == 2 and sleeps == [1]
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


@pytest.mark.parametrize("status", ["404 Not Found", "403 Forbidden", "401 Unauthorized"])
def test_client_errors_are_not_tried_again(tmp_path, serve, status):
    def answer(sock, n, stop):
        read_request(sock)
        sock.sendall(head(0, status))

    srv, sleeps = serve(answer), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps))
    assert f"HTTP {status}" in msg
    assert srv.connections == 1 and sleeps == []


def test_checksum_mismatch_is_not_tried_again(tmp_path, serve):
    def wrong(sock, n, stop):
        read_request(sock)
        sock.sendall(head() + BODY.upper())

    srv, sleeps = serve(wrong), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps))
    assert "checksum mismatch" in msg and SHA in msg and hashlib.sha256(BODY.upper()).hexdigest() in msg
    assert srv.connections == 1 and sleeps == []


def test_retries_stop_at_the_attempt_limit(tmp_path, serve):
    def unavailable(sock, n, stop):
        read_request(sock)
        sock.sendall(head(0, "503 Service Unavailable"))

    srv, sleeps = serve(unavailable), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps, attempts=5))
    assert "HTTP 503" in msg and "gave up after 5 attempts" in msg
    assert srv.connections == 5 and sleeps == [1, 2, 4, 8]


def test_an_interrupt_between_attempts_leaves_nothing(tmp_path, serve):
    def truncated(sock, n, stop):
        read_request(sock)
        sock.sendall(head() + BODY[:1000])

    def interrupt(seconds):
        raise KeyboardInterrupt

    srv = serve(truncated)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        download.cached(srv.url(), SHA, cache / f"{SHA}.tar.gz", KEY, download.Limits(sleep=interrupt))
    assert list(cache.iterdir()) == []


# ---------------------------------------------------------------- failure shapes

def test_connection_refused(tmp_path):
    with socket.socket() as s:                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    msg = fail(f"http://127.0.0.1:{port}/k.tar.gz", tmp_path, limits(sleeps))
    assert "connection refused" in msg and "gave up after 3 attempts" in msg
    assert sleeps == [1, 2]


def test_connection_reset_mid_body(tmp_path, serve):
    def reset(sock, n, stop):
        read_request(sock)
        sock.sendall(head() + BODY[:1000])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()                                # linger 0: an RST, not a FIN

    srv, sleeps = serve(reset), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps))
    assert "connection reset" in msg and "gave up after 3 attempts" in msg
    assert srv.connections == 3 and sleeps == [1, 2]


def test_truncated_body(tmp_path, serve):
    def truncated(sock, n, stop):
        read_request(sock)
        sock.sendall(head() + BODY[:1000])          # then a clean close, short of Content-Length

    srv, sleeps = serve(truncated), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps))
    assert f"cut short after 1000 of {len(BODY)} bytes" in msg and "checksum" not in msg
    assert srv.connections == 3 and sleeps == [1, 2]


def test_truncated_chunked_body(tmp_path, serve):
    def truncated(sock, n, stop):
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"1000\r\n" + BODY[:100])

    srv = serve(truncated)
    msg = fail(srv.url(), tmp_path, limits(Sleeps()))
    assert "truncated" in msg
    assert srv.connections == 3


def test_not_http(tmp_path, serve):
    def ssh(sock, n, stop):
        read_request(sock)
        sock.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    srv, sleeps = serve(ssh), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps))
    assert "not HTTP" in msg and "SSH-2.0" in msg
    assert srv.connections == 1 and sleeps == []    # a server that speaks something else: no retry


def test_closed_without_an_answer(tmp_path, serve):
    def hang_up(sock, n, stop):
        read_request(sock)

    srv, sleeps = serve(hang_up), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps))
    assert "closed the connection without answering" in msg
    assert srv.connections == 3 and sleeps == [1, 2]


def test_tls_to_a_plain_http_server(tmp_path, serve):
    def plain(sock, n, stop):
        sock.recv(65536)                            # the TLS ClientHello, answered in plain HTTP
        sock.sendall(head(0, "400 Bad Request"))
        wait_closed(sock, stop)

    srv, sleeps = serve(plain), Sleeps()
    msg = fail(srv.url("https"), tmp_path, limits(sleeps))
    assert "TLS failure" in msg
    assert srv.connections == 1 and sleeps == []


def test_tls_certificate_not_trusted(tmp_path, serve):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    srv, sleeps = serve(ok, wrap=lambda s: ctx.wrap_socket(s, server_side=True)), Sleeps()
    msg = fail(srv.url("https"), tmp_path, limits(sleeps))
    assert "TLS certificate verification failed" in msg and "self-signed" in msg
    assert srv.connections == 1 and sleeps == []


def test_stalled_transfer(tmp_path, serve):
    def stall(sock, n, stop):
        read_request(sock)
        sock.sendall(head() + BODY[:10])
        wait_closed(sock, stop)                     # then nothing, until the client gives up

    srv, sleeps = serve(stall), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps, stall=0.2))
    assert "stalled: no data for 0.2 s after 10 bytes" in msg and "gave up after 3 attempts" in msg
    assert srv.connections == 3 and sleeps == [1, 2]


def test_no_answer_at_all(tmp_path, serve):
    def silent(sock, n, stop):
        wait_closed(sock, stop)

    srv = serve(silent)
    msg = fail(srv.url(), tmp_path, limits(Sleeps(), stall=0.2, attempts=1))
    assert "no answer within 0.2 s" in msg


def test_a_trickle_hits_the_overall_deadline(tmp_path, serve):
    def trickle(sock, n, stop):
        read_request(sock)
        sock.sendall(head(100))
        for i in range(100):                        # one byte every 50 ms: never stalled, never done
            if stop.wait(0.05):
                return
            sock.sendall(BODY[i:i + 1])

    srv, sleeps = serve(trickle), Sleeps()
    msg = fail(srv.url(), tmp_path, limits(sleeps, stall=5, deadline=0.5))
    assert "not finished within 0.5 s" in msg
    assert srv.connections == 1 and sleeps == []
    assert "build.download_timeout" in msg


def test_the_deadline_covers_the_retries(tmp_path, serve):
    ticks = iter(range(0, 10000, 10))               # every look at the clock: 10 s later

    def unavailable(sock, n, stop):
        read_request(sock)
        sock.sendall(head(0, "503 Service Unavailable"))

    srv = serve(unavailable)
    msg = fail(srv.url(), tmp_path, limits(Sleeps(), attempts=10, deadline=25, clock=lambda: next(ticks)))
    assert "HTTP 503" in msg or "not finished within 25 s" in msg
    assert 1 <= srv.connections < 10


def test_an_unwritable_cache_is_one_error(tmp_path, serve):
    srv = serve(ok)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(InputError) as info:
        download.cached(srv.url(), SHA, tmp_path / "cache" / "downloads" / "x", KEY, limits(Sleeps()))
    assert "cannot write" in info.value.message and str(tmp_path / "cache") in info.value.message


def test_credentials_in_the_url_are_refused_and_not_echoed(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as info:
        download.cached("https://user:s3cret@example.invalid/k.tar.gz", SHA, cache / "x", KEY)
    assert "s3cret" not in str(info.value) and "https://example.invalid/k.tar.gz" in info.value.message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_missing_file_url(tmp_path):
    url = (tmp_path / "nope.tar.gz").as_uri()
    sleeps = Sleeps()
    msg = fail(url, tmp_path, limits(sleeps))
    assert "No such file" in msg and sleeps == []


def test_limits_come_from_the_config(tmp_path):
    from dindind.base import config

    path = tmp_path / "c.yaml"
    cfg = config.parse("build:\n  download_timeout: 600\n  download_stall_timeout: 15\n", path)
    lim = download.limits(cfg)
    assert (lim.deadline, lim.stall) == (600, 15)
    assert (download.limits(config.parse("", path)).deadline, download.limits(config.parse("", path)).stall) \
        == (1800, 60)
    with pytest.raises(config.ConfigError):
        config.parse("build:\n  download_timeout: 0\n", path)
