"""Configuration checking: `portico -t -c FILE` exits 0 on a valid file and 1
on an invalid one, with a `file:line:col: key.path: message` line on stderr
that points at the offending key or value. Also --version and --help."""

import os
import re
import subprocess

import pytest

VALID = """\
listen: [ "127.0.0.1:18080" ]
workers: 2            # or auto
upstreams:
  app:
    servers:
      - { address: "127.0.0.1:9001" }
      - { address: "127.0.0.1:9002", weight: 2 }
    keepalive: 64
    connect_timeout: 2s
    response_timeout: 30s
  other:
    servers:
      - { address: "127.0.0.1:9003" }
routes:               # first match wins
  - match: { host: "a.example", prefix: /api/ }
    upstream: app
  - match: { host: "*.example" }
    upstream: other
  - match: { prefix: / }
    upstream: app
limits: { header_timeout: 10s, idle_timeout: 60s, body_timeout: 60s, send_timeout: 60s,
          max_header_bytes: 16KiB, max_headers: 100, max_request_line: 8KiB, max_body: 16MiB, max_connections: 10000 }
shutdown_timeout: 30s
"""


def run(portico_bin, *args, timeout=10):
    return subprocess.run([portico_bin] + list(args), capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def check(portico_bin, tmp_path, text, name="conf.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return run(portico_bin, "-t", "-c", str(path)), str(path)


def replace_line(text, old, new):
    assert text.count(old) == 1, old
    return text.replace(old, new)


def locate(text, token, nth_line_with=None):
    """1-based (line, col) of the first occurrence of `token` in `text`."""
    for i, line in enumerate(text.split("\n"), 1):
        if nth_line_with is not None and nth_line_with not in line:
            continue
        j = line.find(token)
        if j >= 0:
            return i, j + 1
    raise AssertionError("token %r not in config" % token)


ERR_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>[^:]+): (?P<msg>.+)$")


def assert_error(res, path, key_path, line, cols):
    """Exit status 1 and an error line for key_path at line:col with col in cols."""
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 1, "exit %d, stderr %r" % (res.returncode, err)
    matches = [ERR_RE.match(l) for l in err.splitlines()]
    matches = [m for m in matches if m]
    assert matches, "no file:line:col: key.path: message line in %r" % err
    m = matches[0]
    assert m.group("file") in (path, os.path.basename(path)), err
    assert m.group("path") == key_path, err
    assert int(m.group("line")) == line, "expected line %d: %r" % (line, err)
    assert int(m.group("col")) in cols, "expected column in %s: %r" % (sorted(cols), err)
    assert m.group("msg").strip(), err


def test_valid_config(portico_bin, tmp_path):
    res, _ = check(portico_bin, tmp_path, VALID)
    assert res.returncode == 0, res.stderr.decode()


def test_valid_minimal_config_with_defaults(portico_bin, tmp_path):
    text = ('listen: [ "127.0.0.1:18081" ]\nupstreams:\n  app:\n    servers:\n'
            '      - { address: "127.0.0.1:9001" }\nroutes:\n  - match: { prefix: / }\n    upstream: app\n')
    res, _ = check(portico_bin, tmp_path, text)
    assert res.returncode == 0, res.stderr.decode()


def test_valid_auto_workers_and_units(portico_bin, tmp_path):
    text = replace_line(VALID, "workers: 2 ", "workers: auto ")
    text = replace_line(text, "shutdown_timeout: 30s", "shutdown_timeout: 1m")
    text = replace_line(text, "max_body: 16MiB", "max_body: 1GiB")
    text = replace_line(text, "idle_timeout: 60s", "idle_timeout: 1h")
    text = replace_line(text, "header_timeout: 10s", "header_timeout: 1500ms")
    text = replace_line(text, "send_timeout: 60s", "send_timeout: 1d")
    res, _ = check(portico_bin, tmp_path, text)
    assert res.returncode == 0, res.stderr.decode()


def test_unknown_top_level_key(portico_bin, tmp_path):
    text = replace_line(VALID, "workers: 2 ", "bogus_key: 1\nworkers: 2 ")
    res, path = check(portico_bin, tmp_path, text)
    line, col = locate(text, "bogus_key")
    assert_error(res, path, "bogus_key", line, {col})


def test_unknown_nested_key(portico_bin, tmp_path):
    text = replace_line(VALID, "    keepalive: 64", "    keepalive: 64\n    keepalvie: 3")
    res, path = check(portico_bin, tmp_path, text)
    line, col = locate(text, "keepalvie")
    assert_error(res, path, "upstreams.app.keepalvie", line, {col})


def test_wrong_type(portico_bin, tmp_path):
    text = replace_line(VALID, "keepalive: 64", "keepalive: [ 64 ]")
    res, path = check(portico_bin, tmp_path, text)
    line, kcol = locate(text, "keepalive:")
    _, vcol = locate(text, "[ 64 ]")
    assert_error(res, path, "upstreams.app.keepalive", line, {kcol, vcol})


def test_wrong_type_string_for_integer(portico_bin, tmp_path):
    text = replace_line(VALID, "max_headers: 100", "max_headers: lots")
    res, path = check(portico_bin, tmp_path, text)
    line, kcol = locate(text, "max_headers")
    _, vcol = locate(text, "lots")
    assert_error(res, path, "limits.max_headers", line, {kcol, vcol})


def test_bad_weight(portico_bin, tmp_path):
    text = replace_line(VALID, "weight: 2", "weight: 0")
    res, path = check(portico_bin, tmp_path, text)
    line, kcol = locate(text, "weight")
    _, vcol = locate(text, "0 }", nth_line_with="weight")
    assert_error(res, path, "upstreams.app.servers[1].weight", line, {kcol, vcol})


@pytest.mark.parametrize("bad", ["2x", "fast", "-1s", "1.5.2s", "s"])
def test_bad_duration(portico_bin, tmp_path, bad):
    text = replace_line(VALID, "connect_timeout: 2s", "connect_timeout: %s" % bad)
    res, path = check(portico_bin, tmp_path, text)
    line, kcol = locate(text, "connect_timeout")
    _, vcol = locate(text, bad, nth_line_with="connect_timeout")
    assert_error(res, path, "upstreams.app.connect_timeout", line, {kcol, vcol})


def test_bad_size(portico_bin, tmp_path):
    text = replace_line(VALID, "max_body: 16MiB", "max_body: 16 potatoes")
    res, path = check(portico_bin, tmp_path, text)
    line, kcol = locate(text, "max_body")
    _, vcol = locate(text, "16 potatoes")
    assert_error(res, path, "limits.max_body", line, {kcol, vcol})


def test_route_unknown_upstream(portico_bin, tmp_path):
    text = replace_line(VALID, "    upstream: other", "    upstream: nowhere")
    res, path = check(portico_bin, tmp_path, text)
    line, kcol = locate(text, "upstream: nowhere")
    vcol = kcol + len("upstream: ")
    assert_error(res, path, "routes[1].upstream", line, {kcol, vcol})


def test_empty_servers(portico_bin, tmp_path):
    text = replace_line(VALID, '    servers:\n      - { address: "127.0.0.1:9003" }', "    servers: []")
    res, path = check(portico_bin, tmp_path, text)
    line, kcol = locate(text, "servers: []")
    vcol = kcol + len("servers: ")
    assert_error(res, path, "upstreams.other.servers", line, {kcol, vcol})


def test_bad_address(portico_bin, tmp_path):
    text = replace_line(VALID, '"127.0.0.1:9003"', '"127.0.0.1:notaport"')
    res, path = check(portico_bin, tmp_path, text)
    line, _ = locate(text, "notaport")
    err = res.stderr.decode()
    assert res.returncode == 1, err
    m = ERR_RE.match(err.splitlines()[0])
    assert m and int(m.group("line")) == line, err
    assert m.group("path").startswith("upstreams.other.servers[0]"), err


def test_yaml_syntax_error(portico_bin, tmp_path):
    text = VALID.replace("routes:               # first match wins", "routes: [ unclosed")
    res, path = check(portico_bin, tmp_path, text)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert re.search(r"^%s:\d+:\d+: " % re.escape(path), err, re.M) or \
        re.search(r"^conf\.yaml:\d+:\d+: ", err, re.M), err


def test_missing_file(portico_bin, tmp_path):
    res = run(portico_bin, "-t", "-c", str(tmp_path / "does-not-exist.yaml"))
    assert res.returncode == 1
    assert b"does-not-exist.yaml" in res.stderr


def test_only_first_error_line_is_well_formed(portico_bin, tmp_path):
    """Every stderr line of a failed check is a diagnostic, not noise."""
    text = replace_line(VALID, "keepalive: 64", "keepalive: -3")
    res, _ = check(portico_bin, tmp_path, text)
    assert res.returncode == 1
    lines = [l for l in res.stderr.decode().splitlines() if l.strip()]
    assert lines and all(ERR_RE.match(l) for l in lines), lines


def test_start_with_invalid_config_fails(portico_bin, tmp_path):
    text = replace_line(VALID, "weight: 2", "weight: nope")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = run(portico_bin, "-c", str(path))
    assert res.returncode != 0
    assert b"upstreams.app.servers[1].weight" in res.stderr


def test_version(portico_bin):
    res = run(portico_bin, "--version")
    assert res.returncode == 0
    out = (res.stdout + res.stderr).decode()
    assert "portico" in out.lower() and out.strip(), out


def test_help(portico_bin):
    res = run(portico_bin, "--help")
    assert res.returncode == 0
    out = (res.stdout + res.stderr).decode()
    assert "-c" in out and "-t" in out, out


def test_bad_option(portico_bin):
    res = run(portico_bin, "--no-such-option")
    assert res.returncode != 0
