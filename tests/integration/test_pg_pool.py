"""Pooling under load and failure: 1,000 clients over pool_size 20, the wait
queue's timeout, a PostgreSQL restart, prepared statements in transaction
mode (pgbench -M prepared and the raw protocol), malformed client messages."""

import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import wait_for

from pgutil import (error_text, m_bind, m_close, m_describe, m_execute, m_parse, m_query,  # noqa: F401
                    m_sync, make_pooler, msg, needs_pg, pg_server, raw_login, raw_startup,
                    read_msgs)

pytestmark = needs_pg

import psycopg2  # noqa: E402


def server_conn(pg):
    c = psycopg2.connect(host=pg.sock, port=pg.port, user="postgres", dbname="postgres")
    c.autocommit = True
    return c


def test_thousand_clients_twenty_servers(make_pooler, pg_server):
    p = make_pooler(auth_type="trust", pools=[{"database": "app", "user": "app", "pool_size": 20}],
                    extra={"max_client_conn": 1100})
    conns = []
    for _ in range(1000):
        conns.append(p.connect(password=None))
    mon = server_conn(pg_server)
    peak = [0]
    stop = threading.Event()

    def monitor():
        cur = mon.cursor()
        while not stop.is_set():
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
            peak[0] = max(peak[0], cur.fetchone()[0])
            time.sleep(0.01)

    errors = []
    waited = [0]

    def work(chunk):
        try:
            for rnd in range(2):
                for c in chunk:
                    with c.cursor() as cur:
                        cur.execute("SELECT pg_sleep(0.002), %s", (rnd,))
                        assert cur.fetchone()[1] == rnd
                    c.commit()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    def pools():
        while not stop.is_set():
            try:
                st = p.admin("/pools")["pools"][0]
                waited[0] = max(waited[0], st["cl_waiting"])
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.05)

    mt = threading.Thread(target=monitor)
    pt = threading.Thread(target=pools)
    mt.start()
    pt.start()
    threads = [threading.Thread(target=work, args=(conns[i::100],)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    mt.join()
    pt.join()
    assert not errors, errors[:5]
    assert 0 < peak[0] <= 20, peak[0]
    st = p.admin("/pools")
    assert st["clients"] == 1000
    assert st["pools"][0]["transactions"] >= 2000
    assert waited[0] > 0           # clients really queued for the 20 servers
    for c in conns:
        c.close()
    mon.close()


def test_max_client_conn(make_pooler):
    p = make_pooler(auth_type="trust", extra={"max_client_conn": 3})
    conns = [p.connect(password=None) for _ in range(3)]
    with pytest.raises(psycopg2.OperationalError, match="max_client_conn"):
        p.connect(password=None)
    conns[0].close()
    time.sleep(0.2)
    conns.append(p.connect(password=None))
    for c in conns[1:]:
        c.close()


def test_query_wait_timeout(make_pooler):
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 1}],
                    extra={"query_wait_timeout": "1s"})
    holder = p.connect(password=None)
    hc = holder.cursor()
    hc.execute("SELECT 1")          # a transaction is open: the only server is taken
    waiter = p.connect(password=None)
    start = time.time()
    with pytest.raises(psycopg2.OperationalError):
        waiter.cursor().execute("SELECT 2")
    assert 0.8 < time.time() - start < 5
    # psycopg2 shows only the lost connection; psql shows the reason too
    r = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(p.port), "-U", "app", "app", "-c", "SELECT 2"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode != 0 and b"query_wait_timeout" in r.stderr, r.stderr
    holder.commit()
    with p.connect(password=None) as c, c.cursor() as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone() == (3,)
    st = p.admin("/pools")["pools"][0]
    assert st["wait_timeouts"] == 2
    holder.close()


def test_server_restart_recovered(make_pooler, pg_server):
    p = make_pooler(auth_type="trust")
    conn = p.connect(password=None)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT 1")
    # load from other clients while the server restarts
    stop = threading.Event()
    ok_after = []

    def load():
        while not stop.is_set():
            try:
                with p.connect(password=None) as c, c.cursor() as k:
                    k.execute("SELECT 1")
                    ok_after.append(time.time())
                c.close()
            except psycopg2.Error:
                time.sleep(0.05)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.3)
    pg_server.restart()
    restarted = time.time()
    time.sleep(0.5)
    # the client that stayed connected through the restart goes on: its
    # pooled server died while idle and was replaced
    cur.execute("SELECT 2")
    assert cur.fetchone() == (2,)
    time.sleep(0.5)
    stop.set()
    t.join()
    assert any(x > restarted for x in ok_after)
    conn.close()


def test_pgbench_prepared_transaction_mode(make_pooler, pg_server):
    pg_server.psql("DROP DATABASE IF EXISTS bench")
    pg_server.psql("CREATE DATABASE bench OWNER app")
    env = dict(os.environ, PGPASSWORD="apppass")
    r = subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", pg_server.sock, "-p", str(pg_server.port),
                        "-U", "app", "bench"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout
    p = make_pooler(pools=[{"database": "bench", "user": "app", "pool_size": 4}])
    # one thread per client: pgbench prepares with a blocking call, so a
    # thread of several clients would wait on itself for a server
    for mode in ("prepared", "extended", "simple"):
        r = subprocess.run(["pgbench", "-n", "-M", mode, "-c", "16", "-j", "16", "-t", "50", "-h", "127.0.0.1",
                            "-p", str(p.port), "-U", "app", "bench"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env, timeout=120)
        out = r.stdout.decode()
        assert r.returncode == 0, out
        assert "number of transactions actually processed: 800/800" in out, out
    assert pg_server.count_backends() <= 4


def test_prepared_statements_follow_the_client(make_pooler, pg_server):
    # one server, two clients using the same statement names for different
    # queries; each Bind must reach that client's statement
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 1}])
    a, b = raw_login(p.port), raw_login(p.port)
    a.sendall(m_parse("s1", "SELECT 'a:' || $1::text") + m_sync())
    assert [t for t, _ in read_msgs(a)] == [b"1", b"Z"]
    b.sendall(m_parse("s1", "SELECT 'b:' || $1::text") + m_sync())
    assert [t for t, _ in read_msgs(b)] == [b"1", b"Z"]
    for i in range(3):
        for s, who in ((a, "a"), (b, "b")):
            s.sendall(m_bind("s1", [str(i)]) + m_execute() + m_sync())
            msgs = read_msgs(s)
            rows = [body for t, body in msgs if t == b"D"]
            assert len(rows) == 1, msgs
            assert rows[0].endswith(("%s:%d" % (who, i)).encode()), rows
    # Describe of a tracked statement, then Close: the name is gone for this client only
    a.sendall(m_describe("S", "s1") + m_close("S", "s1") + m_sync())
    assert [t for t, _ in read_msgs(a)] == [b"t", b"T", b"3", b"Z"]
    a.sendall(m_bind("s1", ["x"]) + m_execute() + m_sync())
    msgs = read_msgs(a)
    assert msgs[0][0] == b"E" and "does not exist" in error_text(msgs[0][1]), msgs
    b.sendall(m_bind("s1", ["y"]) + m_execute() + m_sync())
    assert any(t == b"D" and body.endswith(b"b:y") for t, body in read_msgs(b))
    # an error mid-batch skips to Sync; the next batch works
    b.sendall(m_parse("bad", "SELECT nosuchcolumn") + m_bind("bad") + m_execute() + m_sync())
    msgs = read_msgs(b)
    assert [t for t, _ in msgs] == [b"E", b"Z"], msgs
    b.sendall(m_parse("good", "SELECT 41 + 1") + m_bind("good") + m_execute() + m_sync())
    msgs = read_msgs(b)
    assert [t for t, _ in msgs] == [b"1", b"2", b"D", b"C", b"Z"], msgs
    # the server holds each distinct statement once, under portico's names
    names = pg_server.psql("SELECT 1")  # the server is reachable
    assert names == "1"
    a.close()
    b.close()


def test_prepared_statement_reprepared_on_another_server(make_pooler, pg_server):
    # pool of 2: a client prepares on one server; while another client holds
    # that server in a transaction, the first one's Bind lands on the other
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 2}])
    a = raw_login(p.port)
    a.sendall(m_parse("q", "SELECT pg_backend_pid(), $1::int * 2") + m_sync())
    assert [t for t, _ in read_msgs(a)] == [b"1", b"Z"]
    pids = set()
    holders = []
    for i in range(2):
        h = raw_login(p.port)
        h.sendall(m_query("BEGIN; SELECT 1"))
        read_msgs(h)
        holders.append(h)
        a.sendall(m_bind("q", [str(i)]) + m_execute() + m_sync())
        msgs = read_msgs(a, timeout=3)
        if i == 0:
            # both servers are taken now? no: one is held, a gets the other
            rows = [body for t, body in msgs if t == b"D"]
            assert rows, msgs
            pids.add(rows[0])
        else:
            # both held: a waits; release one and it goes on
            assert not any(t == b"Z" for t, _ in msgs)
    holders[0].sendall(m_query("COMMIT"))
    read_msgs(holders[0])
    msgs = read_msgs(a)
    rows = [body for t, body in msgs if t == b"D"]
    assert rows and rows[0].endswith(b"2"), msgs
    for h in holders:
        h.close()
    a.close()


def test_malformed_client_messages(make_pooler):
    p = make_pooler(auth_type="trust")
    cases = [
        struct.pack("!I", 4),                                   # startup: impossible length
        struct.pack("!II", 8, 1234),                           # startup: unknown protocol
        struct.pack("!II", 12, 196608) + b"user",               # startup: unterminated
        raw_startup(extra={}).replace(b"user\0app", b"usxr\0app"),  # no user
    ]
    for data in cases:
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(data)
        msgs = read_msgs(s, until=b"\xff", timeout=5)
        assert msgs and msgs[0][0] == b"E", (data, msgs)
        s.close()
    after_login = [
        b"Q" + struct.pack("!I", 2),                            # length below 4
        b"Q" + struct.pack("!I", 0x7fffffff),                   # length far too large
        msg(b"Q", b"SELECT 1"),                                 # unterminated string
        msg(b"B", b"\0\0" + struct.pack("!HH", 0, 3)),          # 3 parameters announced, none sent
        msg(b"P", b"s\0SELECT 1\0" + struct.pack("!H", 5)),     # 5 types announced
        msg(b"D", b"Xname\0"),                                  # describe what?
        msg(b"z", b""),                                         # unknown type
        msg(b"E", b"\0"),                                       # Execute without row count
    ]
    for data in after_login:
        s = raw_login(p.port)
        s.sendall(data)
        msgs = read_msgs(s, until=b"\xff", timeout=5)
        assert msgs and msgs[0][0] == b"E", (data, msgs)
        assert s.recv(10) == b""                                # and closed
        s.close()
    # truncated messages, then the client goes away: nothing else is disturbed
    for cut in (1, 3, 6):
        s = raw_login(p.port)
        s.sendall(m_query("SELECT 1")[:cut])
        s.close()
    with p.connect(password=None) as c, c.cursor() as cur:
        cur.execute("SELECT 'still fine'")
        assert cur.fetchone() == ("still fine",)
    assert p.portico.alive()


def backend_pids(pg, user="app"):
    out = pg.psql("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = '%s'" % user)
    return set(int(x) for x in out.split(",") if x)


def test_min_pool_size_and_idle_timeout(make_pooler, pg_server):
    # min_pool_size: server connections open with no client; server_idle_timeout closes
    # idle ones above it
    assert backend_pids(pg_server) == set()
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 5, "min_pool_size": 2}],
                    extra={"server_idle_timeout": "1s"})
    assert wait_for(lambda: len(backend_pids(pg_server)) == 2, 10), backend_pids(pg_server)
    conns = [p.connect(password=None) for _ in range(4)]
    for c in conns:
        c.cursor().execute("SELECT 1")      # four transactions open at once: four servers
    assert len(backend_pids(pg_server)) == 4
    for c in conns:
        c.commit()
        c.close()
    assert wait_for(lambda: len(backend_pids(pg_server)) == 2, 10), backend_pids(pg_server)
    time.sleep(1.5)
    assert len(backend_pids(pg_server)) == 2    # never below min_pool_size


def test_server_lifetime(make_pooler, pg_server):
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 1}],
                    extra={"server_lifetime": "500ms"})
    conn = p.connect(password=None)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    first = cur.fetchone()[0]
    time.sleep(1)
    cur.execute("SELECT pg_backend_pid()")     # released after this: older than its lifetime
    cur.execute("SELECT pg_backend_pid()")
    assert cur.fetchone()[0] != first
    assert first not in backend_pids(pg_server)
    conn.close()


def test_reserve_pool(make_pooler, pg_server):
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 1, "reserve_pool": 1}],
                    extra={"reserve_pool_timeout": "300ms", "query_wait_timeout": "5s"})
    holder = p.connect(password=None)
    holder.cursor().execute("SELECT 1")         # holds the pool's only connection
    waiter = p.connect(password=None)
    start = time.time()
    cur = waiter.cursor()
    cur.execute("SELECT 2")                     # served by the reserve after ~300 ms
    assert cur.fetchone() == (2,)
    took = time.time() - start
    assert 0.25 < took < 3, took
    assert len(backend_pids(pg_server)) == 2
    holder.close()
    waiter.close()


def test_session_mode_keeps_the_server(make_pooler, pg_server):
    # session mode: SQL-level PREPARE and temporary tables live as long as the client
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 2, "pool_mode": "session"}])
    a, b = p.connect(password=None), p.connect(password=None)
    a.autocommit = b.autocommit = True
    ca, cb = a.cursor(), b.cursor()
    ca.execute("CREATE TEMP TABLE t1 (v int); INSERT INTO t1 VALUES (1); PREPARE q AS SELECT v FROM t1")
    cb.execute("SELECT 1")
    ca.execute("EXECUTE q")
    assert ca.fetchone() == (1,)
    ca.execute("SELECT pg_backend_pid()")
    cb.execute("SELECT pg_backend_pid()")
    assert ca.fetchone() != cb.fetchone()
    a.close()
    b.close()


def test_prepared_statement_cache_bound(make_pooler, pg_server):
    # max_prepared_statements: 2 per server connection; a client with 3 statements
    # in rotation gets each one prepared again after it was closed to make room
    p = make_pooler(auth_type="trust", workers=1,
                    pools=[{"database": "app", "user": "app", "pool_size": 1}],
                    extra={"max_prepared_statements": 2})
    s = raw_login(p.port)
    for i in range(3):
        s.sendall(m_parse("q%d" % i, "SELECT %d + $1::int" % (100 * i)) + m_sync())
        assert [t for t, _ in read_msgs(s)] == [b"1", b"Z"]
    for rnd in range(3):
        for i in range(3):
            s.sendall(m_bind("q%d" % i, [str(rnd)]) + m_execute() + m_sync())
            msgs = read_msgs(s)
            rows = [body for t, body in msgs if t == b"D"]
            assert rows and rows[0].endswith(str(100 * i + rnd).encode()), msgs
    # the server never held more than two of them: ask it through the same connection
    s.sendall(m_query("SELECT count(*) FROM pg_prepared_statements"))
    rows = [body for t, body in read_msgs(s) if t == b"D"]
    assert rows and rows[0].endswith(b"2"), rows
    s.close()


def test_half_closed_clients_are_closed(make_pooler):
    # data and FIN in one edge: portico must still see the EOF and close
    p = make_pooler(auth_type="trust")
    for cut in (1, 3, 6, 9):
        s = raw_login(p.port)
        s.sendall(m_query("SELECT 1")[:cut])
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        assert s.recv(100) == b""       # portico closed its side
        s.close()
    assert wait_for(lambda: p.admin("/pools")["clients"] == 0, 5), p.admin("/pools")


def test_psycopg3_server_side_prepares(make_pooler, pg_server):
    # psycopg 3 prepares statements on the server (protocol-level Parse with
    # names _pg3_0, _pg3_1, ... per connection; prepare_threshold=0: from the
    # first execution). Many connections over one server connection in
    # transaction mode: the same names stand for different statements, and
    # a connection's statements must follow it to whichever server it lands on.
    psycopg = pytest.importorskip("psycopg")
    p = make_pooler(auth_type="trust", workers=2,
                    pools=[{"database": "app", "user": "app", "pool_size": 2}])
    dsn = p.dsn(password=None)
    errors = []

    def client(k):
        try:
            with psycopg.connect(dsn, prepare_threshold=0, autocommit=True) as conn:
                for i in range(30):
                    # per client a different query text behind the same _pg3_ names
                    row = conn.execute("SELECT %s::int * " + str(k + 1), (i,)).fetchone()
                    assert row == (i * (k + 1),), row
                    with conn.transaction():
                        row = conn.execute("SELECT %s::text || '-" + str(k) + "'", ("t%d" % i,),
                                           prepare=True).fetchone()
                        assert row == ("t%d-%d" % (i, k),), row
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    # the server saw at most pool_size connections of app
    assert pg_server.count_backends("app") <= 2


class FreezeProxy:
    """A TCP relay to the server whose existing connections can be frozen: the
    bytes stop both ways and nothing is closed, like a server that went away
    without a word or an idle connection a firewall dropped."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.pairs = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            s.settimeout(None)
            pair = {"frozen": False, "socks": (c, s)}
            self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, c, s), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, s, c), daemon=True).start()

    @staticmethod
    def _pump(pair, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            while pair["frozen"]:
                time.sleep(0.05)
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for x in pair["socks"]:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def freeze_existing(self):
        for pair in self.pairs:
            pair["frozen"] = True

    def close(self):
        self.lsock.close()


@pytest.mark.parametrize("pool_size", [1, 2])
def test_idle_server_checked_before_reuse(make_pooler, pg_server, pool_size):
    # server_check_delay: an idle server connection is checked before a
    # client gets it; one that does not answer (here: frozen by the relay)
    # is not handed out: another serves the client (pool_size 2: at once; 1:
    # once the check timed out after server_connect_timeout and it was closed)
    proxy = FreezeProxy(pg_server.port)
    try:
        p = make_pooler(auth_type="trust", workers=1, servers=[proxy.port],
                        pools=[{"database": "app", "user": "app", "pool_size": pool_size}],
                        extra={"server_check_delay": "200ms", "server_connect_timeout": "1s"})
        conn = p.connect(password=None)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SELECT 1")
        time.sleep(0.4)
        cur.execute("SELECT 1")             # checked (it idled 400 ms) and reused
        assert cur.fetchone() == (1,)
        proxy.freeze_existing()
        time.sleep(0.4)
        result = []
        start = time.time()
        t = threading.Thread(target=lambda: (cur.execute("SELECT 2"), result.append(cur.fetchone())))
        t.start()
        t.join(15)
        assert not t.is_alive(), "the query went to the frozen server connection"
        assert result == [(2,)]
        took = time.time() - start
        assert took < 8, took
        if pool_size == 1:
            assert took >= 0.8, took        # it waited out the check
        conn.close()
    finally:
        proxy.close()
