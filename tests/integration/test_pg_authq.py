"""auth_query: the secret of a user that the auth file lacks is looked up on
the real PostgreSQL (PgBouncer's auth_user / auth_query), for SCRAM and md5
users alike; wrong passwords and unknown users are refused, a lookup that
cannot run refuses its clients, and `auth.cache` bounds how long a secret
is reused."""

import threading

import pytest

from pgutil import make_pooler, needs_pg, pg_server  # noqa: F401

pytestmark = needs_pg

import psycopg2  # noqa: E402

LOOKUP = "'SELECT uname, phash FROM public.user_lookup($1)'"


@pytest.fixture(scope="module")
def authq_roles(pg_server):
    """pgauth: an unprivileged role that may only call a SECURITY DEFINER
    lookup function (PgBouncer's recommended set-up); authsuper: a superuser
    that may read pg_shadow itself (the default query)."""
    pg_server.psql(
        "CREATE ROLE pgauth LOGIN PASSWORD 'authpass';"
        "CREATE ROLE authsuper LOGIN SUPERUSER PASSWORD 'superpass';"
        "SET password_encryption = 'scram-sha-256';"
        "CREATE ROLE rotuser LOGIN PASSWORD 'rot1';")
    pg_server.psql(
        "CREATE FUNCTION public.user_lookup(i_username text, OUT uname text, OUT phash text)"
        " RETURNS record AS $$ SELECT usename::text, passwd::text FROM pg_catalog.pg_shadow"
        " WHERE usename = i_username $$ LANGUAGE sql SECURITY DEFINER;"
        "REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public;"
        "GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO pgauth;", db="app")
    return pg_server


POOLS = [{"database": "app", "user": "app", "password": "apppass", "pool_size": 4},
         {"database": "app", "user": "md5user", "password": "md5pass", "pool_size": 2},
         {"database": "app", "user": "ghost", "password": "x", "pool_size": 1}]


def query_user(p, user, password):
    with p.connect(user=user, password=password) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        return cur.fetchone()[0]


def test_scram_and_md5_users_looked_up(make_pooler, authq_roles):
    # no auth file at all: every secret comes from the lookup function. With
    # type md5 an md5 secret gets an md5 exchange, a SCRAM secret SCRAM's.
    p = make_pooler(users={}, auth_type="md5", pools=POOLS,
                    auth_extra={"user": "pgauth", "password": "authpass", "query": LOOKUP})
    assert query_user(p, "app", "apppass") == "app"
    assert query_user(p, "md5user", "md5pass") == "md5user"
    for user in ("app", "md5user"):
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            p.connect(user=user, password="wrong")
    # again, from the cache this time
    assert query_user(p, "app", "apppass") == "app"


def test_unknown_user_refused(make_pooler, authq_roles):
    # a pool exists for ghost, but the database has no such role: the lookup
    # finds nothing and the login fails like a wrong password (for SCRAM,
    # at the end of the exchange, so the answer says nothing of the user)
    p = make_pooler(users={}, pools=POOLS,
                    auth_extra={"user": "pgauth", "password": "authpass", "query": LOOKUP})
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(user="ghost", password="x")
    with pytest.raises(psycopg2.OperationalError, match="no pool"):
        p.connect(user="nobody", password="x")
    assert query_user(p, "app", "apppass") == "app"


def test_default_query_on_pg_shadow_with_the_file_first(make_pooler, authq_roles):
    # the auth user's own password comes from the auth file; md5user is in
    # the file with a password that is not its real one: the file wins
    p = make_pooler(users={"authsuper": "superpass", "md5user": "filepass"}, pools=POOLS,
                    auth_extra={"user": "authsuper"})
    assert query_user(p, "app", "apppass") == "app"
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(user="md5user", password="md5pass")
    # concurrent first logins of one user share one lookup
    ok = []

    def login():
        try:
            ok.append(query_user(p, "app", "apppass"))
        except Exception as e:  # noqa: BLE001
            ok.append(repr(e))
    ts = [threading.Thread(target=login) for _ in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert ok == ["app"] * 20


def test_failed_lookup_refuses_and_is_not_cached(make_pooler, authq_roles):
    p = make_pooler(users={}, pools=POOLS,
                    auth_extra={"user": "pgauth", "password": "not-its-password", "query": LOOKUP})
    for _ in range(2):
        with pytest.raises(psycopg2.OperationalError, match="could not be looked up"):
            p.connect(user="app", password="apppass")
    # the log is written by a thread of its own: the line comes a moment later
    from conftest import wait_for
    assert wait_for(lambda: "auth_query" in p.portico.log_text(), 10), p.portico.log_text()
    # a query the auth user may not run fails the same way
    p2 = make_pooler(users={}, pools=POOLS,
                     auth_extra={"user": "pgauth", "password": "authpass"})
    with pytest.raises(psycopg2.OperationalError, match="could not be looked up"):
        p2.connect(user="app", password="apppass")


def test_cache_bounds_how_long_a_secret_is_reused(make_pooler, authq_roles):
    pools = [{"database": "app", "user": "rotuser", "password": "rot1", "pool_size": 1}]
    # one worker: the server connection of the first login serves the later ones
    # (a new one would log in with rot1, which the server no longer takes)
    cached = make_pooler(users={}, pools=pools, workers=1,
                         auth_extra={"user": "pgauth", "password": "authpass", "query": LOOKUP,
                                     "cache": "1h"})
    fresh = make_pooler(users={}, pools=pools, workers=1,
                        auth_extra={"user": "pgauth", "password": "authpass", "query": LOOKUP,
                                    "cache": "0"})
    try:
        # both log in once (and keep their server connection, logged in as rot1)
        assert query_user(cached, "rotuser", "rot1") == "rotuser"
        assert query_user(fresh, "rotuser", "rot1") == "rotuser"
        authq_roles.psql("ALTER ROLE rotuser PASSWORD 'rot2'")
        # the cached secret is still the old one for an hour
        assert query_user(cached, "rotuser", "rot1") == "rotuser"
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            cached.connect(user="rotuser", password="rot2")
        # without a cache every login asks again
        assert query_user(fresh, "rotuser", "rot2") == "rotuser"
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            fresh.connect(user="rotuser", password="rot1")
    finally:
        authq_roles.psql("ALTER ROLE rotuser PASSWORD 'rot1'")


def test_config_errors(portico_bin, tmp_path):
    import subprocess
    from pgutil import pg_config
    for auth_extra, want in [({"query": "'SELECT 1'"}, "postgres.auth.query: needs postgres.auth.user"),
                             ({"cache": "soon", "user": "a"}, "postgres.auth.cache: expected a duration"),
                             ({"bogus": "1"}, "postgres.auth.bogus: unknown key")]:
        cfg = tmp_path / "p.yaml"
        cfg.write_text(pg_config(18080, 16432, [5432], [{"database": "app", "user": "app"}],
                                 auth_extra=auth_extra))
        r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=10)
        assert r.returncode != 0 and want in r.stdout.decode(), r.stdout.decode()
    # no file and no auth user: nothing to check passwords against
    cfg.write_text(pg_config(18080, 16432, [5432], [{"database": "app", "user": "app"}]))
    r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=10)
    assert r.returncode != 0 and "missing key \"file\"" in r.stdout.decode()


def test_pools_without_passwords_log_in_with_what_clients_proved(make_pooler, authq_roles):
    # no password anywhere in the configuration but the auth user's: portico
    # logs in to the server with the SCRAM keys a client's proof gave (app,
    # hba scram-sha-256) or with the md5 secret (md5user, hba md5), as
    # PgBouncer's pass-through does
    pools = [{"database": "app", "user": "app", "pool_size": 2},
             {"database": "app", "user": "md5user", "pool_size": 2}]
    p = make_pooler(users={}, auth_type="md5", pools=pools,
                    auth_extra={"user": "pgauth", "password": "authpass", "query": LOOKUP})
    for _ in range(4):          # both workers, new server connections each time
        assert query_user(p, "app", "apppass") == "app"
        assert query_user(p, "md5user", "md5pass") == "md5user"
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(user="app", password="wrong")


def test_stored_verifier_in_the_file_without_pool_password(make_pooler, pg_server):
    secret = pg_server.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    p = make_pooler(users={"app": secret}, pools=[{"database": "app", "user": "app", "pool_size": 2}])
    for _ in range(3):
        assert query_user(p, "app", "apppass") == "app"


def test_reload(make_pooler, authq_roles):
    # auth.query and auth.cache change on SIGHUP; auth.user takes a restart
    import signal
    from conftest import wait_for
    p = make_pooler(users={}, pools=POOLS,
                    auth_extra={"user": "pgauth", "password": "authpass", "query": LOOKUP, "cache": "0"})
    assert query_user(p, "app", "apppass") == "app"
    path = p.portico.config_path
    text = open(path).read()
    # a query that finds no one: every login fails once it applies (cache 0)
    with open(path, "w") as f:
        f.write(text.replace(LOOKUP, "'SELECT NULL::text, NULL::text WHERE $1::text IS NOT NULL'"))
    p.portico.signal(signal.SIGHUP)
    assert wait_for(lambda: "postgres: configuration reloaded" in p.portico.log_text(), 10)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        p.connect(user="app", password="apppass")
    with open(path, "w") as f:
        f.write(text.replace("user: pgauth", "user: authsuper"))
    p.portico.signal(signal.SIGHUP)
    assert wait_for(lambda: "restart portico to apply" in p.portico.log_text(), 10), p.portico.log_text()
