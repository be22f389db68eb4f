"""Replicas: a streaming replica made with pg_basebackup -R; reads of a
read_only pool and read-only transactions reach it; health checks take a
stopped replica out (its reads go to the primary) and put it back."""

import time

import pytest

from conftest import wait_for
from pgutil import PgCluster, make_pooler, needs_pg, pg_server  # noqa: F401

pytestmark = needs_pg


@pytest.fixture(scope="module")
def primary():
    c = PgCluster("rprimary")
    c.psql("CREATE ROLE reader LOGIN PASSWORD 'readpass'; GRANT CONNECT ON DATABASE app TO reader")
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def replica(primary):
    r = PgCluster("replica", primary=primary)
    assert r.psql("SELECT pg_is_in_recovery()") == "t"
    yield r
    r.destroy()


@pytest.fixture
def pool_pair(make_pooler, primary, replica):
    servers = [{"address": '"127.0.0.1:%d"' % primary.port, "role": "primary"},
               {"address": '"127.0.0.1:%d"' % replica.port, "role": "replica", "weight": 2}]
    return make_pooler(server=primary, servers=servers,
                       users={"app": "apppass", "reader": "readpass"},
                       pools=[{"database": "app", "user": "app", "pool_size": 4},
                              {"database": "app", "user": "reader", "pool_size": 4, "read_only": "true"}],
                       extra={"health_interval": "300ms", "server_connect_timeout": "1s"})


def in_recovery(conn, sql="SELECT pg_is_in_recovery()"):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_reads_reach_the_replica(pool_pair, primary, replica):
    p = pool_pair
    rd = p.connect(user="reader", password="readpass")
    rd.autocommit = True
    assert in_recovery(rd) is True
    rw = p.connect()
    rw.autocommit = True
    assert in_recovery(rw) is False
    # a read-only transaction of a normal pool runs on the replica, the next one does not
    with rw.cursor() as cur:
        cur.execute("BEGIN READ ONLY")
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is True
        cur.execute("COMMIT")
        cur.execute("BEGIN")
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is False
        cur.execute("COMMIT")
    # data written on the primary is read back from the replica
    with rw.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS rt (v int)")
    primary.psql("GRANT SELECT ON rt TO reader", db="app")
    with rw.cursor() as cur:
        cur.execute("INSERT INTO rt VALUES (7)")
    def replicated():
        try:
            return replica.psql("SELECT count(*) FROM rt", db="app") == "1"
        except AssertionError:
            return False
    assert wait_for(replicated, 10)
    with rd.cursor() as cur:
        cur.execute("SELECT v FROM rt")
        assert cur.fetchone() == (7,)
    st = p.admin("/pools")
    assert [s["role"] for s in st["servers"]] == ["primary", "replica"]
    assert all(s["up"] for s in st["servers"])
    rd.close()
    rw.close()


def test_a_stopped_replica_sends_reads_to_the_primary(pool_pair, replica):
    p = pool_pair
    rd = p.connect(user="reader", password="readpass")
    rd.autocommit = True
    assert in_recovery(rd) is True
    replica.stop()
    try:
        # idle pooled connections to the replica die with it; new reads go to the primary
        assert wait_for(lambda: not p.admin("/pools")["servers"][1]["up"], 10)
        assert 'portico_pg_server_up{server="127.0.0.1:%d",role="replica"} 0' % replica.port in p.admin("/metrics")
        for _ in range(5):
            assert in_recovery(rd) is False
        other = p.connect(user="reader", password="readpass")
        other.autocommit = True
        assert in_recovery(other) is False
        other.close()
    finally:
        replica.start()
    assert wait_for(lambda: p.admin("/pools")["servers"][1]["up"], 10)
    assert wait_for(lambda: in_recovery(rd) is True, 10)
    rd.close()
