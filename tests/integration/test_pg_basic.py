"""The pooler against a real PostgreSQL: logins (SCRAM, md5, trust), wrong
passwords, simple and extended queries, COPY both ways, notices, errors,
cancel, SET replay and prepared statements in transaction mode, session
mode's reset, and the figures on the admin listener."""

import io
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from pgutil import (make_pooler, md5_secret, needs_pg, pg_server, raw_startup, read_msgs,  # noqa: F401
                    raw_login, m_parse, m_bind, m_execute, m_sync)

pytestmark = needs_pg

import psycopg2  # noqa: E402


def test_scram_login_and_query(make_pooler):
    p = make_pooler()
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 + 1, current_user, current_database()")
        assert cur.fetchone() == (2, "app", "app")


def test_wrong_password_refused(make_pooler):
    p = make_pooler()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(password="nope")
    # an unknown user has no pool: refused before any password
    with pytest.raises(psycopg2.OperationalError, match="no pool"):
        p.connect(user="ghost", password="x")


def test_scram_with_stored_verifier(make_pooler, pg_server):
    # the auth file may hold the server's own SCRAM verifier instead of the password
    secret = pg_server.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert secret.startswith("SCRAM-SHA-256$")
    p = make_pooler(users={"app": secret},
                    pools=[{"database": "app", "user": "app", "password": "apppass"}])
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(password="wrong")


def test_md5_login_and_md5_server(make_pooler):
    # clients log in with md5; portico logs in to the server with md5 too (hba: md5)
    p = make_pooler(auth_type="md5", users={"md5user": md5_secret("md5user", "md5pass"), "app": "apppass"},
                    pools=[{"database": "app", "user": "md5user", "password": "md5pass"}])
    with p.connect(user="md5user", password="md5pass") as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("md5user",)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(user="md5user", password="bad")


def test_trust(make_pooler):
    p = make_pooler(auth_type="trust", users={"app": "apppass"})
    with p.connect(password=None) as conn, conn.cursor() as cur:
        cur.execute("SELECT 7")
        assert cur.fetchone() == (7,)


def test_psql_through_portico(make_pooler):
    p = make_pooler()
    env = dict(os.environ, PGPASSWORD="apppass")
    r = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(p.port), "-U", "app", "-d", "app",
                        "-c", "SELECT 'hello' || ' world'", "-c", "SELECT count(*) FROM generate_series(1, 1000)"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["hello", "world", "1000"]


def test_errors_notices_and_recovery(make_pooler):
    p = make_pooler()
    conn = p.connect()
    conn.autocommit = True
    cur = conn.cursor()
    with pytest.raises(psycopg2.errors.DivisionByZero):
        cur.execute("SELECT 1/0")
    cur.execute("DO $$ BEGIN RAISE NOTICE 'hello notice'; END $$")
    assert any("hello notice" in n for n in conn.notices)
    cur.execute("SELECT 3")
    assert cur.fetchone() == (3,)
    conn.close()


def test_copy_in_and_out(make_pooler, pg_server):
    pg_server.psql("DROP TABLE IF EXISTS copyt; CREATE TABLE copyt (id int, t text); "
                   "GRANT ALL ON copyt TO app", db="app")
    p = make_pooler()
    rows = "".join("%d\trow %d %s\n" % (i, i, "x" * (i % 50)) for i in range(20000))
    with p.connect() as conn, conn.cursor() as cur:
        cur.copy_expert("COPY copyt FROM STDIN", io.StringIO(rows))
        conn.commit()
        out = io.StringIO()
        cur.copy_expert("COPY (SELECT * FROM copyt ORDER BY id) TO STDOUT", out)
        assert out.getvalue() == rows
        cur.execute("SELECT count(*) FROM copyt")
        assert cur.fetchone() == (20000,)


def test_big_rows(make_pooler):
    # messages larger than any buffer pass through whole
    p = make_pooler()
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT repeat('a', 3000000), %s::text", ("b" * 2000000,))
        a, b = cur.fetchone()
        assert len(a) == 3000000 and len(b) == 2000000


def test_transactions_share_few_servers(make_pooler, pg_server):
    p = make_pooler(pools=[{"database": "app", "user": "app", "pool_size": 2}])
    conns = [p.connect() for _ in range(10)]
    for round_ in range(3):
        for i, c in enumerate(conns):
            with c.cursor() as cur:
                cur.execute("SELECT %s", (i,))
                assert cur.fetchone() == (i,)
            c.commit()
    assert pg_server.count_backends() <= 2
    for c in conns:
        c.close()


def test_set_is_replayed_in_transaction_mode(make_pooler):
    # two clients, one server: each keeps its own search_path / timezone
    p = make_pooler(pools=[{"database": "app", "user": "app", "pool_size": 1}], workers=1)
    a, b = p.connect(), p.connect()
    a.autocommit = b.autocommit = True
    ca, cb = a.cursor(), b.cursor()
    ca.execute("SET search_path TO pg_catalog, public")
    cb.execute("SET TIME ZONE 'America/New_York'")
    for _ in range(3):
        ca.execute("SHOW search_path")
        assert ca.fetchone() == ("pg_catalog, public",)
        cb.execute("SHOW search_path")
        assert cb.fetchone() == ('"$user", public',)
        cb.execute("SHOW timezone")
        assert cb.fetchone() == ("America/New_York",)
        ca.execute("SHOW timezone")
        assert ca.fetchone()[0] != "America/New_York"
    cb.execute("RESET timezone")
    cb.execute("SHOW timezone")
    assert cb.fetchone()[0] != "America/New_York"
    a.close()
    b.close()


def test_session_mode_resets_server(make_pooler):
    p = make_pooler(pools=[{"database": "app", "user": "app", "pool_size": 1, "pool_mode": "session"}],
                    workers=1)
    with p.connect() as c1:
        c1.autocommit = True
        cur = c1.cursor()
        cur.execute("SET application_name = 'first'")
        cur.execute("PREPARE s1 AS SELECT 1")
        cur.execute("SELECT pg_backend_pid()")
        pid1 = cur.fetchone()[0]
    c1.close()
    with p.connect() as c2:
        c2.autocommit = True
        cur = c2.cursor()
        cur.execute("SELECT pg_backend_pid(), current_setting('application_name')")
        pid2, app = cur.fetchone()
        assert pid2 == pid1          # the same server connection...
        assert app != "first"        # ...reset by DISCARD ALL
        cur.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cur.fetchone() == (0,)


def test_cancel(make_pooler):
    # several times, so that cancel requests land on the client's worker and on the
    # other one (the kernel spreads connections over the workers' sockets)
    p = make_pooler()
    conn = p.connect()
    cur = conn.cursor()
    for _ in range(4):
        t = threading.Timer(0.3, conn.cancel)
        t.start()
        start = time.time()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            cur.execute("SELECT pg_sleep(20)")
        assert time.time() - start < 10
        t.join()
        conn.rollback()
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)
        conn.rollback()
    # a cancel when nothing runs does nothing
    other = p.connect()
    other.cancel()
    other.close()
    conn.close()


def test_ssl_and_gssenc_requests_are_refused_politely(make_pooler):
    p = make_pooler(auth_type="trust", users={"app": "apppass"})
    # sslmode=prefer: SSLRequest answered 'N', the client goes on in plain text
    with p.connect(password=None, sslmode="prefer") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(psycopg2.OperationalError):
        p.connect(password=None, sslmode="require")
    s = socket.create_connection(("127.0.0.1", p.port))
    s.sendall(struct.pack("!II", 8, 80877104))
    assert s.recv(1) == b"N"
    s.sendall(raw_startup())
    msgs = read_msgs(s)
    assert msgs[-1] == (b"Z", b"I")
    s.close()


def test_pools_endpoint_and_metrics(make_pooler):
    p = make_pooler(auth_type="trust", extra={"slow_query": "50ms", "slow_query_max_chars": 40})
    with p.connect(password=None) as conn, conn.cursor() as cur:
        for _ in range(5):
            cur.execute("SELECT 1")
    # a slow statement with a parameter (extended protocol): logged, truncated, parameter never
    s = raw_login(p.port)
    s.sendall(m_parse("", "SELECT pg_sleep(0.1), $1::text = 'x' /* a long comment to be cut off */")
              + m_bind("", ["never-logged"]) + m_execute() + m_sync())
    msgs = read_msgs(s)
    assert msgs[-1] == (b"Z", b"I"), msgs
    s.close()
    pools = p.admin("/pools")["pools"]
    assert pools[0]["database"] == "app" and pools[0]["user"] == "app"
    assert pools[0]["queries"] >= 6
    assert pools[0]["slow_queries"] >= 1
    status = p.admin("/status")             # the status page's data has the pools too
    assert status["postgres"]["pools"][0]["queries"] >= 6
    metrics = p.admin("/metrics")
    assert 'portico_pg_queries_total{database="app",user="app"}' in metrics
    assert "portico_pg_query_duration_seconds_bucket" in metrics
    log = p.portico.log_text()
    assert "slow query" in log and "pg_sleep" in log
    assert "never-logged" not in log
    assert "cut off" not in log


def _fake_scram_server(final):
    """A PostgreSQL impostor on a free port that asks for SCRAM-SHA-256 and,
    after the client-final-message, sends `final` (bytes) and waits.
    Returns (port, stop event, None)."""
    import base64
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.2)
    stop = threading.Event()

    def msg(t, body):
        return t + struct.pack("!I", 4 + len(body)) + body

    def read_msg(c):
        head = b""
        while len(head) < 5:
            d = c.recv(5 - len(head))
            if not d:
                return None, None
            head += d
        n = struct.unpack("!I", head[1:5])[0] - 4
        body = b""
        while len(body) < n:
            body += c.recv(n - len(body))
        return head[:1], body

    def serve(c):
        c.settimeout(5)
        try:
            n = struct.unpack("!I", c.recv(4))[0]
            c.recv(n - 4)                                       # the startup message
            c.sendall(msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"))
            _, first = read_msg(c)                              # SASLInitialResponse
            nonce = first.split(b"r=")[1].split(b",")[0]
            sf = b"r=" + nonce + b"impostor,s=" + base64.b64encode(b"saltsaltsalt") + b",i=4096"
            c.sendall(msg(b"R", struct.pack("!I", 11) + sf))
            read_msg(c)                                         # client-final
            c.sendall(final)
            while not stop.is_set() and c.recv(1024):
                pass
        except OSError:
            pass
        finally:
            c.close()

    def accept():
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(c,), daemon=True).start()
        lsock.close()

    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1], stop, None


def test_server_that_skips_scram_final_is_refused(make_pooler):
    """A server (or something in its place) that answers the client-final-
    message with AuthenticationOk, never showing its ServerSignature, has not
    proved it knows the password: portico fails the connection and tells the
    waiting client, rather than handing it an impostor's session."""
    import types
    from conftest import wait_for
    port, stop, _ = _fake_scram_server(struct.pack("!cII", b"R", 8, 0) + struct.pack("!cI", b"Z", 5) + b"I")
    try:
        p = make_pooler(auth_type="trust", server=types.SimpleNamespace(port=port),
                        pools=[{"database": "app", "user": "app", "pool_size": 1,
                                "password": "apppass"}],
                        extra={"server_connect_timeout": "2s", "query_wait_timeout": "5s"})
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s.sendall(raw_startup("app", "app"))       # the login itself needs a server
        msgs = read_msgs(s, until=b"E", timeout=10)
        s.close()
        errors = [b for t, b in msgs if t == b"E"]
        assert errors and b"without its signature" in errors[0], msgs
        assert wait_for(lambda: "the server ended SCRAM without its signature" in
                        p.portico.log_text(), 10), p.portico.log_text()
    finally:
        stop.set()
