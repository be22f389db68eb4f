"""TLS from portico to PostgreSQL (sslmode require and verify-full, OpenSSL
non-blocking), and a reload that leaves the pooler as it was."""

import os
import signal
import subprocess
import time

import pytest

from conftest import free_port, wait_for
from pgutil import PgCluster, make_pooler, needs_pg, pg_server  # noqa: F401

pytestmark = needs_pg

import psycopg2  # noqa: E402


@pytest.fixture(scope="module")
def tls_server():
    c = PgCluster("tls", ssl=True)
    yield c
    c.destroy()


def other_ca(tmp_path):
    key, crt = str(tmp_path / "o.key"), str(tmp_path / "o.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", key, "-out", crt], check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)
    return crt


def ssl_of_backends(pg, user):
    return pg.psql("SELECT string_agg(s.ssl::text, ',') FROM pg_stat_ssl s JOIN pg_stat_activity a "
                   "USING (pid) WHERE a.usename = '%s'" % user)


def test_require(make_pooler, tls_server):
    # tlsonly may not log in without TLS (hostnossl ... reject)
    p = make_pooler(server=tls_server, users={"tlsonly": "tlspass"},
                    pools=[{"database": "postgres", "user": "tlsonly"}], extra={"sslmode": "require"})
    with p.connect(user="tlsonly", password="tlspass", db="postgres") as c, c.cursor() as cur:
        cur.execute("SELECT repeat('x', 200000)")
        assert len(cur.fetchone()[0]) == 200000
        assert ssl_of_backends(tls_server, "tlsonly") == "true"


def test_without_tls_the_server_refuses(make_pooler, tls_server):
    p = make_pooler(server=tls_server, users={"tlsonly": "tlspass"},
                    pools=[{"database": "postgres", "user": "tlsonly"}])
    with pytest.raises(psycopg2.OperationalError):
        p.connect(user="tlsonly", password="tlspass", db="postgres")


def test_verify_full(make_pooler, tls_server, tmp_path):
    srv = {"address": '"localhost:%d"' % tls_server.port, "role": "primary"}
    p = make_pooler(server=tls_server, servers=[srv], users={"tlsonly": "tlspass"},
                    pools=[{"database": "postgres", "user": "tlsonly"}],
                    extra={"sslmode": "verify-full", "sslrootcert": tls_server.cert})
    with p.connect(user="tlsonly", password="tlspass", db="postgres") as c, c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    # a certificate that does not chain to sslrootcert: refused, and the client is told
    bad = make_pooler(server=tls_server, servers=[srv], users={"tlsonly": "tlspass"},
                      pools=[{"database": "postgres", "user": "tlsonly"}],
                      extra={"sslmode": "verify-full", "sslrootcert": other_ca(tmp_path)})
    with pytest.raises(psycopg2.OperationalError, match="TLS handshake"):
        bad.connect(user="tlsonly", password="tlspass", db="postgres")


def test_require_against_a_server_without_tls(make_pooler, pg_server):
    p = make_pooler(extra={"sslmode": "require"})
    with pytest.raises(psycopg2.OperationalError, match="refused TLS"):
        p.connect()


def scram_verifier(password, salt=b"portico-test-salt", iterations=4096):
    import base64
    import hashlib
    import hmac
    sp = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    ck = hmac.new(sp, b"Client Key", "sha256").digest()
    sk = hmac.new(sp, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(hashlib.sha256(ck).digest()), b64(sk))


def test_reload_applies_pool_sizes_and_passwords(make_pooler, pg_server):
    p = make_pooler()
    conn = p.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT 1")
    path = p.portico.config_path
    text = open(path).read()
    users = text.split("file: ")[1].split(" ")[0].strip()
    # the auth file now holds a verifier for a new password; portico keeps logging in
    # to the server with the old one, now written in the pool
    with open(users, "w") as f:
        f.write('"app" "%s"\n' % scram_verifier("newpass"))
    with open(path, "w") as f:
        f.write(text.replace("pool_size: 5", "pool_size: 7, password: apppass"))
    p.portico.signal(signal.SIGHUP)
    assert wait_for(lambda: "postgres: configuration reloaded" in p.portico.log_text(), 10), p.portico.log_text()
    assert p.admin("/pools")["pools"][0]["pool_size"] == 7
    cur.execute("SELECT 2")                     # the connection stays
    assert cur.fetchone() == (2,)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(password="apppass")
    with p.connect(password="newpass") as c2, c2.cursor() as k:
        k.execute("SELECT current_user")
        assert k.fetchone() == ("app",)
    conn.close()


def test_reload_of_what_takes_a_restart(make_pooler):
    p = make_pooler()
    conn = p.connect()
    conn.autocommit = True
    path = p.portico.config_path
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text.replace("pool_size: 5", "pool_size: 6, pool_mode: session"))
    p.portico.signal(signal.SIGHUP)
    assert wait_for(lambda: "restart portico to apply" in p.portico.log_text(), 10), p.portico.log_text()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    st = p.admin("/pools")["pools"][0]
    assert st["pool_size"] == 5 and st["pool_mode"] == "transaction"
    conn.close()


def test_pooler_port_shared_with_http_is_refused(portico_bin, tmp_path):
    port = free_port()
    cfg = tmp_path / "clash.yaml"
    cfg.write_text('listen: [ "127.0.0.1:%d" ]\nupstreams: { app: { servers: [ "127.0.0.1:9" ] } }\n'
                   'routes: [ { upstream: app } ]\npostgres:\n  listen: [ "127.0.0.1:%d" ]\n'
                   '  servers: [ "127.0.0.1:5432" ]\n  auth: { type: trust }\n'
                   '  pools: [ { database: a, user: b } ]\n' % (port, port))
    r = subprocess.run([portico_bin, "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=20)
    assert r.returncode == 1
    assert b"postgres.listen 127.0.0.1:%d: also an HTTP or admin address" % port in r.stdout
