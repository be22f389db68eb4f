"""A real PostgreSQL for the pooler's tests, and helpers to put portico in front of it.

PgCluster runs Debian's initdb and postgres (/usr/lib/postgresql/<v>/bin) in a
temporary directory on a free loopback port, unix sockets in that directory.
As root, the server runs as the unprivileged `postgres` user the package
created (PostgreSQL refuses to run as root); otherwise as the current user.
Every process is started here and stopped by its own PID.

Roles made in every cluster:
  app     / apppass   password stored as SCRAM (hba: scram-sha-256)
  md5user / md5pass   password stored as md5    (hba: md5)
and the database `app` owned by app.
"""

import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import free_port, port_accepts, wait_for

PG_BIN = None
for _d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
    if os.path.exists(os.path.join(_d, "postgres")):
        PG_BIN = _d
        break

try:
    import psycopg2  # noqa: F401
    HAVE_PSYCOPG2 = True
except ImportError:
    HAVE_PSYCOPG2 = False

needs_pg = pytest.mark.skipif(PG_BIN is None or not HAVE_PSYCOPG2,
                              reason="PostgreSQL server or psycopg2 not installed (scripts/deps.sh)")


def _run_as():
    """(uid, gid) to run PostgreSQL as, or None for the current user."""
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


class PgCluster:
    def __init__(self, name="primary", primary=None, ssl=False):
        self.base = tempfile.mkdtemp(prefix="portico-pg-%s-" % name)
        os.chmod(self.base, 0o755)
        self.data = os.path.join(self.base, "data")
        self.sock = self.base
        self.port = free_port()
        self.log_path = os.path.join(self.base, "postgres.log")
        self.proc = None
        self.ids = _run_as()
        self.name = name
        if self.ids:
            os.chown(self.base, *self.ids)
        try:
            if primary is None:
                self._initdb(ssl)
            else:
                self._basebackup(primary)
        except BaseException:
            self.destroy()
            raise

    # -- setup
    def _cmd(self, args, **kw):
        kw.setdefault("check", True)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        if self.ids:
            kw["user"], kw["group"] = self.ids
            kw["extra_groups"] = []
        return subprocess.run(args, cwd=self.base, **kw)

    def _initdb(self, ssl):
        self._cmd([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                   "--locale=C"])
        conf = [
            "listen_addresses = '127.0.0.1'",
            "port = %d" % self.port,
            "unix_socket_directories = '%s'" % self.sock,
            "max_connections = 300",
            "fsync = off", "synchronous_commit = off", "full_page_writes = off",
            "wal_level = replica", "max_wal_senders = 5", "hot_standby = on",
            "shared_buffers = 32MB",
            "log_min_messages = warning",
        ]
        if ssl:
            key = os.path.join(self.data, "server.key")
            crt = os.path.join(self.data, "server.crt")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                            "-keyout", key, "-out", crt], check=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
            os.chmod(key, 0o600)
            if self.ids:
                os.chown(key, *self.ids)
                os.chown(crt, *self.ids)
            self.cert = crt
            conf += ["ssl = on", "ssl_cert_file = '%s'" % crt, "ssl_key_file = '%s'" % key]
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n".join(conf) + "\n")
        hba = [
            "local all all trust",
            "local replication all trust",
            "host replication all 127.0.0.1/32 trust",
            "host all md5user 127.0.0.1/32 md5",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        if ssl:
            hba.insert(0, "hostnossl all tlsonly 127.0.0.1/32 reject")
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("\n".join(hba) + "\n")
        self.start()
        self.psql("SET password_encryption = 'scram-sha-256';"
                  "CREATE ROLE app LOGIN PASSWORD 'apppass';"
                  "CREATE ROLE tlsonly LOGIN PASSWORD 'tlspass';"
                  "SET password_encryption = 'md5';"
                  "CREATE ROLE md5user LOGIN PASSWORD 'md5pass';")
        self.psql("CREATE DATABASE app OWNER app")

    def _basebackup(self, primary):
        self._cmd([os.path.join(PG_BIN, "pg_basebackup"), "-h", primary.sock, "-p", str(primary.port),
                   "-U", "postgres", "-D", self.data, "-R", "-X", "stream", "-c", "fast"])
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("port = %d\nunix_socket_directories = '%s'\n" % (self.port, self.sock))
        self.start()

    # -- process
    def start(self):
        log = open(self.log_path, "ab")
        kw = {}
        if self.ids:
            kw = {"user": self.ids[0], "group": self.ids[1], "extra_groups": []}
        self.proc = subprocess.Popen([os.path.join(PG_BIN, "postgres"), "-D", self.data],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.base, **kw)
        log.close()
        ok = wait_for(lambda: self.proc.poll() is None and port_accepts(self.port) and
                      self._ready(), 30, 0.1)
        if not ok:
            raise AssertionError("postgres did not start:\n" + self.log_text())

    def _ready(self):
        r = subprocess.run([os.path.join(PG_BIN, "pg_isready"), "-h", self.sock, "-p",
                            str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def stop(self, mode=signal.SIGINT, timeout=30):
        """SIGINT is PostgreSQL's fast shutdown: it ends every session."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(mode)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def destroy(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-5000:]
        except OSError:
            return ""

    # -- queries as the superuser over the unix socket
    def psql(self, sql, db="postgres"):
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", self.sock,
                            "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if r.returncode != 0:
            raise AssertionError("psql failed: %s" % r.stderr.decode())
        return r.stdout.decode().strip()

    def count_backends(self, user="app"):
        return int(self.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'" % user))


def scram_secret_line(user, password):
    return '"%s" "%s"\n' % (user, password)


def md5_secret(user, password):
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def pg_config(http_port, pg_port, servers, pools, auth_type="scram-sha-256", auth_file=None,
              admin_port=None, workers=2, extra=None, auth_extra=None):
    """portico YAML with a `postgres:` section (and the HTTP part it requires)."""
    out = ['listen: [ "127.0.0.1:%d" ]' % http_port, "workers: %d" % workers,
           "upstreams:", "  app:", "    servers: [ \"127.0.0.1:9\" ]",
           "routes:", "  - upstream: app", "access_log: off"]
    if admin_port:
        out.append('admin: { listen: "127.0.0.1:%d" }' % admin_port)
    out.append("postgres:")
    out.append('  listen: [ "127.0.0.1:%d" ]' % pg_port)
    out.append("  servers:")
    for s in servers:
        if isinstance(s, dict):
            out.append("    - { %s }" % ", ".join("%s: %s" % (k, v) for k, v in s.items()))
        else:
            out.append('    - { address: "127.0.0.1:%d", role: primary }' % s)
    auth = ["type: %s" % auth_type] + (["file: %s" % auth_file] if auth_file else [])
    auth += ["%s: %s" % (k, v) for k, v in (auth_extra or {}).items()]
    out.append("  auth: { %s }" % ", ".join(auth))
    out.append("  pools:")
    for p in pools:
        out.append("    - { %s }" % ", ".join("%s: %s" % (k, v) for k, v in p.items()))
    for k, v in (extra or {}).items():
        out.append("  %s: %s" % (k, v))
    return "\n".join(out) + "\n"


class Pooler:
    def __init__(self, portico, pg_port, admin_port=None):
        self.portico = portico
        self.port = pg_port
        self.admin_port = admin_port
        assert wait_for(lambda: port_accepts(pg_port), 10), portico.log_text()

    def dsn(self, user="app", password="apppass", db="app", **kw):
        parts = ["host=127.0.0.1", "port=%d" % self.port, "user=%s" % user, "dbname=%s" % db,
                 "connect_timeout=10"]
        if password is not None:
            parts.append("password=%s" % password)
        parts += ["%s=%s" % (k, v) for k, v in kw.items()]
        return " ".join(parts)

    def connect(self, **kw):
        import psycopg2
        return psycopg2.connect(self.dsn(**kw))

    def admin(self, path):
        import json
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.admin_port, path), timeout=10) as r:
            body = r.read().decode()
        return json.loads(body) if path in ("/pools", "/status") else body


@pytest.fixture(scope="module")
def pg_server():
    if PG_BIN is None or not HAVE_PSYCOPG2:
        pytest.skip("PostgreSQL server or psycopg2 not installed (scripts/deps.sh)")
    c = PgCluster()
    yield c
    c.destroy()


@pytest.fixture
def make_pooler(start_portico, request, tmp_path):
    """make_pooler(pools=[...], auth_type=..., users={name: secret}, extra={...},
    auth_extra={key: value under postgres.auth}) -> Pooler
    In front of `server` (a PgCluster), by default the module's pg_server."""
    def make(pools=None, auth_type="scram-sha-256", users=None, extra=None, servers=None,
             workers=2, server=None, auth_extra=None):
        srv = server or request.getfixturevalue("pg_server")
        if users is None:
            users = {"app": "apppass", "md5user": "md5pass"}
        auth_file = None
        if users:
            auth_file = str(tmp_path / "users.txt")
            with open(auth_file, "w") as f:
                for u, s in users.items():
                    f.write('"%s" "%s"\n' % (u, s))
        if pools is None:
            pools = [{"database": "app", "user": "app", "pool_size": 5}]
        ports = set()
        while len(ports) < 3:           # free_port() may hand out the same port twice
            ports.add(free_port())
        http_port, pg_port, admin_port = sorted(ports)
        text = pg_config(http_port, pg_port, servers or [srv.port], pools, auth_type, auth_file,
                         admin_port, workers, extra, auth_extra)
        p = start_portico(text, port=http_port)
        return Pooler(p, pg_port, admin_port)
    return make


def raw_startup(user="app", database="app", extra=None):
    import struct
    body = b""
    for k, v in [("user", user), ("database", database)] + list((extra or {}).items()):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!II", 8 + len(body), 196608) + body


def read_msgs(sock, until=b"Z", timeout=5.0):
    """Read messages until one of type `until` (or EOF); [(type, body)]."""
    import struct
    sock.settimeout(timeout)
    buf = b""
    out = []
    while True:
        while len(buf) >= 5:
            t = buf[0:1]
            n = struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + n:
                break
            out.append((t, buf[5:1 + n]))
            buf = buf[1 + n:]
            if t == until:
                return out
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return out
        if not d:
            return out
        buf += d


# -- raw protocol, for what drivers do not let a test do
def msg(t, body=b""):
    import struct
    return t + struct.pack("!I", 4 + len(body)) + body


def m_parse(name, query, ntypes=0):
    import struct
    return msg(b"P", name.encode() + b"\0" + query.encode() + b"\0" + struct.pack("!H", ntypes) +
               b"\0\0\0\0" * ntypes)


def m_bind(stmt, params=(), portal=""):
    import struct
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!H", 0)
    body += struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            b = p.encode()
            body += struct.pack("!I", len(b)) + b
    body += struct.pack("!H", 0)
    return msg(b"B", body)


def m_execute(portal="", rows=0):
    import struct
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!I", rows))


def m_describe(what, name):
    return msg(b"D", what.encode() + name.encode() + b"\0")


def m_close(what, name):
    return msg(b"C", what.encode() + name.encode() + b"\0")


def m_sync():
    return msg(b"S")


def m_query(q):
    return msg(b"Q", q.encode() + b"\0")


def raw_login(port, user="app", database="app"):
    """A logged-in raw socket (the pool must use auth: trust)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(raw_startup(user, database))
    msgs = read_msgs(s)
    assert msgs and msgs[-1] == (b"Z", b"I"), msgs
    return s


def error_text(body):
    """The M field of an ErrorResponse body."""
    for f in body.split(b"\0"):
        if f[:1] == b"M":
            return f[1:].decode()
    return ""
