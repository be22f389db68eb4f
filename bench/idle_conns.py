#!/usr/bin/python3
"""Idle keep-alive connection memory probe (stdlib only; run with /usr/bin/python3).

    idle_conns.py --port PORT --pid PID [--conns 9000] [--path /small] [--settle 2]

1. Warm-up: a few GET PATH requests on one connection, then VmRSS of PID is read ("before").
2. Opens --conns connections to 127.0.0.1:PORT (at most --window connecting at once), sends
   one GET PATH on each and reads the whole response (must be 200, Content-Length or chunked),
   then leaves every connection open and idle.
3. Waits --settle seconds, reads VmRSS of PID again ("after"), and checks how many of the
   connections the proxy has closed meanwhile (readable = EOF or unexpected bytes).
4. Prints one tab-separated line and closes everything:
       ok|fail  rss_before_kb  rss_after_kb  opened  alive  failed  seconds  note
"""
import argparse
import errno
import os
import resource
import select
import selectors
import socket
import sys
import time


def vmrss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def response_complete(buf):
    """None if incomplete, else the HTTP status of a complete response in buf."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return -1
    length = None
    chunked = False
    for h in head[1:]:
        name, _, value = h.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    body = buf[end + 4:]
    if chunked:
        return status if body.endswith(b"0\r\n\r\n") else None
    if length is None:
        return -2           # read-until-close responses cannot stay keep-alive
    return status if len(body) >= length else None


class Conn:
    __slots__ = ("sock", "state", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connect"
        self.buf = b""


def open_conns(addr, req, n, window, timeout):
    """Open n connections, one request each, full 200 response read; return
    (held sockets, number failed, first error)."""
    sel = selectors.DefaultSelector()
    held, failed, started, inflight = [], 0, 0, 0
    first_error = ""

    def fail(c, why):
        nonlocal failed, inflight, first_error
        failed += 1
        inflight -= 1
        first_error = first_error or why
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    deadline = time.monotonic() + timeout
    while len(held) + failed < n:
        if time.monotonic() > deadline:
            first_error = first_error or f"timed out after {timeout:.0f}s"
            for key in list(sel.get_map().values()):
                fail(key.data, first_error)
            failed += n - started
            break
        while inflight < window and started < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            started += 1
            rc = s.connect_ex(addr)
            c = Conn(s)
            inflight += 1
            if rc not in (0, errno.EINPROGRESS):
                fail(c, f"connect: {os.strerror(rc)}")
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            if c.state == "connect":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(c, f"connect: {os.strerror(err)}")
                    continue
                try:
                    c.sock.send(req)
                except OSError as e:
                    fail(c, f"send: {e}")
                    continue
                c.state = "read"
                sel.modify(c.sock, selectors.EVENT_READ, c)
            else:
                try:
                    chunk = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    fail(c, f"recv: {e}")
                    continue
                if not chunk:
                    fail(c, "closed by proxy before a full response")
                    continue
                c.buf += chunk
                st = response_complete(c.buf)
                if st is None:
                    continue
                if st != 200:
                    fail(c, f"status {st}")
                    continue
                sel.unregister(c.sock)
                c.buf = b""
                inflight -= 1
                held.append(c.sock)
    sel.close()
    return held, failed, first_error


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=9000)
    ap.add_argument("--path", default="/small")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.conns + 64:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.conns + 1024), hard))
        except (ValueError, OSError):
            pass

    req = (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
           f"User-Agent: portico-bench-idle\r\n\r\n").encode()
    addr = (a.host, a.port)

    # Warm-up: a few requests on one connection, then one burst of --window connections
    # opened exactly as below and closed again, so that memory the proxy needs only while
    # requests are in flight (buffers, pools), which the allocator keeps after freeing,
    # is in the baseline and not counted as the cost of idle connections.
    w = socket.create_connection(addr, timeout=5)
    for _ in range(3):
        w.sendall(req)
        buf = b""
        while response_complete(buf) is None:
            chunk = w.recv(65536)
            if not chunk:
                print("fail\t0\t0\t0\t0\t0\t0\twarm-up: connection closed by the proxy")
                return 1
            buf += chunk
        if response_complete(buf) != 200:
            print(f"fail\t0\t0\t0\t0\t0\t0\twarm-up: status {response_complete(buf)}")
            return 1
    w.close()
    held, failed, err = open_conns(addr, req, min(a.window, a.conns), a.window, a.timeout)
    for s in held:
        s.close()
    if failed:
        print(f"fail\t0\t0\t{len(held)}\t0\t{failed}\t0\twarm-up burst of "
              f"{min(a.window, a.conns)}: {failed} failed, first: {err}")
        return 1
    time.sleep(1.0)
    before = vmrss_kb(a.pid)

    t0 = time.monotonic()
    held, failed, first_error = open_conns(addr, req, a.conns, a.window, a.timeout)
    opened_s = time.monotonic() - t0

    time.sleep(a.settle)
    after = vmrss_kb(a.pid)

    # A held connection that is readable now was closed (or written to) by the proxy.
    p = select.poll()
    for s in held:
        p.register(s, select.POLLIN | select.POLLRDHUP)
    closed = len(p.poll(0))
    alive = len(held) - closed

    note = f"{failed} failed, first: {first_error}" if failed else ""
    print(f"{'ok' if held else 'fail'}\t{before}\t{after}\t{len(held)}\t{alive}\t{failed}\t"
          f"{opened_s:.1f}\t{note}")
    for s in held:
        s.close()
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
