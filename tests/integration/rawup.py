"""A scriptable raw upstream for tests that need an upstream to misbehave
exactly: each accepted connection runs `handler(conn)` in its own thread,
where `conn` reads request heads and bodies and writes whatever bytes the
test wants, at whatever read boundaries it wants. Everything it received is
kept (`received`), so a test can assert the bytes portico forwarded."""

import socket
import threading
import time


class RawConn:
    def __init__(self, sock, server):
        self.sock = sock
        self.server = server
        self.buf = b""
        self.received = b""

    def _recv(self, timeout=5.0):
        self.sock.settimeout(timeout)
        d = self.sock.recv(65536)
        if d:
            self.received += d
            with self.server.lock:
                self.server.received += d
        return d

    def read_head(self, timeout=5.0):
        """The next request head (bytes, with its final CRLF), or None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            d = self._recv(timeout)
            if not d:
                return None
            self.buf += d
        i = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:i], self.buf[i:]
        with self.server.lock:
            self.server.heads.append(head)
        return head

    def read_until(self, marker, timeout=5.0):
        while marker not in self.buf:
            d = self._recv(timeout)
            if not d:
                return None
            self.buf += d
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n, timeout=5.0):
        while len(self.buf) < n:
            d = self._recv(timeout)
            if not d:
                return None
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data):
        self.sock.sendall(data)

    def wait_eof(self, timeout=5.0):
        end = time.time() + timeout
        while time.time() < end:
            try:
                d = self._recv(max(0.05, end - time.time()))
            except socket.timeout:
                continue
            except OSError:
                return True
            if not d:
                return True
            self.buf += d
        return False


class RawUpstream:
    def __init__(self, handler):
        self.handler = handler
        self.lock = threading.Lock()
        self.received = b""
        self.heads = []
        self.conns = 0
        self.errors = []
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.stopping = False
        self.socks = []
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
                self.socks.append(s)
            threading.Thread(target=self._run, args=(s, n), daemon=True).start()

    def _run(self, s, n):
        c = RawConn(s, self)
        try:
            self.handler(c, n)
        except (OSError, socket.timeout):
            pass
        except Exception as e:          # a broken handler fails the test that reads errors
            self.errors.append(repr(e))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass
