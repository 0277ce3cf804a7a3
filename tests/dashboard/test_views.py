"""The dashboard's data, plots, server and static report on a real store (no browser)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from hts.dashboard import server
from hts.dashboard.html import write_html
from hts.dashboard.server import Dashboard
from hts.dashboard.views import StoreViews
from hts.spec import parse_campaign
from tests.conftest import lj_campaign, run_on_parsl


def _get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_snapshot_has_every_view(store):
    s = StoreViews(store).snapshot()
    assert s["rows"] > 0 and [x["stage"] for x in s["stages"]] == ["prefilter", "rescore"]
    assert s["finalized"] and s["rate_overall"] > 0
    assert set(s["time_per_stage"]) == {"prefilter", "rescore"}
    assert s["time_per_stage"]["prefilter"]["n"] == s["rows"]
    assert s["failures"] and all(
        f["ids"] for f in s["failures"]
    )  # max_atoms: 2 fails fluorite cells
    assert s["best"] and "rescore" in s["best"][0]["e_above_hull_by_stage"]
    assert s["parsl"] is None  # this run kept no monitoring database


def test_plots_and_structures(store):
    v = StoreViews(store)
    for name in ("hull", "parity", "throughput"):
        svg = v.plot(name)
        assert svg.startswith(b"<?xml") and b"<svg" in svg
    best = v.snapshot()["best"][0]["id"]
    cif = v.structure(best, "cif").decode()
    assert "_cell_length_a" in cif
    xyz = v.structure(best, "extxyz").decode()
    assert xyz.splitlines()[0].strip().isdigit()
    with pytest.raises(KeyError):
        v.structure("0000000000000000")


def test_loopback_needs_no_token(store):
    d = Dashboard(store, port=0)
    d.start()
    try:
        assert d.token is None
        code, body, _ = _get(d.url + "api/snapshot")
        assert code == 200 and json.loads(body)["rows"] > 0
        code, body, _ = _get(d.url.rstrip("/") + "/static/app.js")
        assert code == 200 and b"HTS_STATIC" in body
        assert _get(d.url + "nothing/here")[0] == 404
    finally:
        d.close()


def test_non_loopback_bind_refuses_requests_without_the_token(store):
    d = Dashboard(store, host="0.0.0.0", port=0)
    d.start()
    base = f"http://127.0.0.1:{d.port}"
    try:
        assert d.token and len(d.token) >= 20
        for path in ("/", "/api/snapshot", "/plot/hull.svg", "/static/app.js"):
            code, body, _ = _get(base + path)
            assert code == 403 and b"token" in body
        assert _get(base + "/api/snapshot?token=wrong")[0] == 403
        code, _, headers = _get(f"{base}/?token={d.token}")
        assert code == 200 and "hts_token=" in headers.get("Set-Cookie", "")
        assert _get(base + "/api/snapshot", {"Cookie": f"hts_token={d.token}"})[0] == 200
        assert _get(base + "/api/snapshot", {"Authorization": f"Bearer {d.token}"})[0] == 200
    finally:
        d.close()


def test_loopback_answers_only_loopback_host_names(store):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: refused."""
    d = Dashboard(store, port=0)
    d.start()
    try:
        for host in (f"127.0.0.1:{d.port}", f"localhost:{d.port}", "localhost", "[::1]:8050"):
            assert _get(d.url + "api/snapshot", {"Host": host})[0] == 200, host
        for host in ("evil.example", f"evil.example:{d.port}", "127.0.0.1.evil.example"):
            code, body, _ = _get(d.url + "api/snapshot", {"Host": host})
            assert code == 403 and b"127.0.0.1" in body, host
    finally:
        d.close()


def test_any_token_characters_are_refused_cleanly(store):
    """A non-ASCII token (query, bearer or cookie) is a 403, not a dropped connection."""
    d = Dashboard(store, host="0.0.0.0", port=0)
    d.start()
    base = f"http://127.0.0.1:{d.port}"
    try:
        assert _get(base + "/api/snapshot?token=%C3%A9t%C3%A9")[0] == 403
        for header in ({"Authorization": "Bearer été"}, {"Cookie": "hts_token=été"}):
            raw = {k: v.encode("utf-8").decode("latin-1") for k, v in header.items()}
            assert _get(base + "/api/snapshot", raw)[0] == 403
    finally:
        d.close()


def _idle(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that never send a request (preconnects, abandoned tabs, a scanner)."""
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


def test_a_request_is_answered_while_200_idle_connections_are_open(store):
    """Idle connections hold no thread: the page's requests are answered at once."""
    d = Dashboard(store, port=0)
    d.start()
    assert _get(d.url + "api/snapshot")[0] == 200  # the first snapshot's reading, out of the timing
    threads = threading.active_count()
    t0 = time.monotonic()
    idle = _idle(d.port, 200)  # quick too: a burst does not overflow the accept queue
    try:
        time.sleep(0.2)  # all accepted and parked
        code, body, _ = _get(d.url + "api/snapshot")
        assert code == 200 and json.loads(body)["rows"] > 0
        assert _get(d.url + "static/style.css")[0] == 200
        assert time.monotonic() - t0 < 4.0  # below IDLE_S: no idle connection had timed out
        # at most the pool's threads were added, whatever the number of connections
        assert threading.active_count() <= threads + server.WORKERS
        assert not any(_closed_by_server(s, 0.01) for s in idle)  # still open: not refused
    finally:
        for s in idle:
            s.close()
        d.close()


def test_idle_connections_are_closed_after_the_timeout(store, monkeypatch):
    """An idle connection is closed after IDLE_S; beyond MAX_IDLE waiting, the oldest goes first."""
    monkeypatch.setattr(server, "IDLE_S", 0.5)
    monkeypatch.setattr(server, "MAX_IDLE", 4)
    d = Dashboard(store, port=0)
    d.start()
    idle = []
    try:
        for _ in range(6):  # one at a time, so that their order is known
            idle += _idle(d.port, 1)
            time.sleep(0.05)
        assert [_closed_by_server(s, 0.2) for s in idle[:2]] == [True, True]  # the oldest two
        assert not any(_closed_by_server(s, 0.01) for s in idle[2:])
        assert all(_closed_by_server(s, 2.0) for s in idle[2:])  # timed out
        assert _get(d.url + "api/snapshot")[0] == 200
    finally:
        for s in idle:
            s.close()
        d.close()


def test_static_report_is_one_offline_file(store, tmp_path):
    out = write_html(store, tmp_path / "report.html")
    page = out.read_text()
    assert "window.HTS_STATIC" in page and "<style>" in page
    # nothing fetched from anywhere: no external scripts, stylesheets or images
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert 'src="static/' not in page and 'href="static/' not in page
    data = json.loads(
        page.split("window.HTS_STATIC = ", 1)[1].split(";</script>", 1)[0].replace("<\\/", "</")
    )
    assert set(data["plots"]) == {"hull", "parity", "throughput"}
    assert set(data["structures"]) == {b["id"] for b in data["snapshot"]["best"]}


def test_workers_and_blocks_from_parsl_monitoring(tmp_path):
    """A run on a local HTEX with monitoring on: the dashboard lists its block and workers."""
    site = tmp_path / "monitored.yaml"
    site.write_text(
        "name: monitored\nmonitoring: true\nmonitoring_interval: 1\n"
        "executors:\n  cpu: {kind: htex, workers: 2}\n"
    )
    c = parse_campaign(lj_campaign(tmp_path, limits={"max_candidates": 16}, site=str(site)))
    run_on_parsl(c, tmp_path / "lj.zarr.parsl")
    p = StoreViews(c.store).snapshot()["parsl"]
    assert p is not None, "no monitoring database next to the store"
    assert p["tasks_completed"] >= 4 and p["task_states"].get("exec_done", 0) >= 4
    assert any(b["executor"] == "cpu" for b in p["blocks"])
    assert p["workers"] and p["workers"][0]["workers"] == 2
