"""The status page in a real browser (headless Chromium over the DevTools protocol),
served by a replica of a three-node cluster: it shows every node with its role, the
live tail shows a put made after the page loaded, and a SIGKILLed master shows as
down within 2 s. Skips, saying why, where chromium is not installed (.ci/run
installs Debian's where it can).

STATUS_PAGE_SCREENSHOT=path keeps the page's screenshot (docs/status-page.png is one; not a STRATA_ variable: the daemons would refuse it as unknown)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from websockets.sync.client import connect as ws_connect

from strata.server.metrics import documented_families
from strata_client import Client

from .browser import Browser, chromium
from .test_http import exported
from .test_replication import Cluster

DOWN_WITHIN_S = 2.0  # the bar: a killed master shows as down within this


@pytest.fixture
def browser(tmp_path):
    if chromium() is None:
        pytest.skip("chromium is not installed: `apt-get install chromium` (.ci/run does)")
    b = Browser(str(tmp_path / "chromium"))
    yield b
    b.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path).start()
    yield c
    c.stop()


def _cell(node: str, col: int) -> str:
    return f"document.querySelector('#peer-{node} td:nth-child({col})')?.textContent"


def test_the_page_shows_roles_the_tail_and_a_killed_master(cluster, browser, tmp_path):
    c = cluster
    m = c.master()
    r = next(i for i in sorted(c.nodes) if i != m)
    browser.navigate(f"http://{c.nodes[r].metrics}/")

    # Every node, each with the role it says it has; this page's node named as such.
    browser.wait_for(f"{_cell(m, 3)} === 'master'")
    for i in c.nodes:
        if i != m:
            browser.wait_for(f"{_cell(i, 3)} === 'replica'")
    assert browser.evaluate(f"{_cell(r, 1)}") == f"{r} (this page)"
    # Its own style and script run under its Content-Security-Policy (which admits
    # nothing else): the style sheet applies, and the script filled the table above.
    assert browser.evaluate("getComputedStyle(document.getElementById('rings')).marginTop"
                            ) == "10px"
    assert browser.evaluate("document.getElementById('role').textContent") == "replica"
    assert browser.evaluate("document.getElementById('node').textContent") == r
    # A replica applies its master's log but takes no client writes: the page says where they go.
    assert browser.evaluate("document.getElementById('write-state').textContent") == "to the master"
    # A cluster's metrics (replication, the committed feed) are all documented too.
    documented = {name for name, *_ in documented_families()}
    assert exported(c.nodes[m].metrics) - documented == set()

    # A WebSocket subscriber of this node is listed with its tier (/v1/connections).
    with ws_connect(f"ws://{c.nodes[r].ws}/v1/events") as sub:
        sub.send(json.dumps({"op": "subscribe", "tier": "realtime"}))
        assert json.loads(sub.recv(timeout=5))["op"] == "subscribed"
        browser.wait_for("[...document.querySelectorAll('#connections tbody tr')]"
                         ".some(tr => tr.cells[0].textContent === 'websocket' && "
                         "tr.cells[4].textContent === 'realtime')")

        # The tail: a put made once the page's event stream is open appears in it
        # (after a few more, spread out, which the write-rate chart draws).
        browser.wait_for("document.getElementById('tail-state').textContent === '(connected)'")
        with Client(c.targets()) as cl:
            for i in range(20):
                cl.put(b"warm-up-%d" % i, b"x" * i)
                time.sleep(0.05)
            lsn = cl.put(b"put-after-the-page-loaded", b"hello")
        while json.loads(sub.recv(timeout=5)).get("lsn") != lsn:  # read: the close needs it
            pass
        row = browser.wait_for(
            "[...document.querySelectorAll('#tail .event')].map(e => e.textContent)"
            ".find(t => t.includes('put-after-the-page-loaded'))")
        assert f"#{lsn} " in row and "hello" in row
        # The write shows on this replica's own figures too.
        browser.wait_for(f"Number(document.getElementById('last-lsn').textContent) >= {lsn}")

        shot = tmp_path / "status-page.png"
        browser.screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("STATUS_PAGE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["STATUS_PAGE_SCREENSHOT"])

    # SIGKILL the master: its row says down within DOWN_WITHIN_S.
    c.nodes[m].kill()
    killed = time.monotonic()
    browser.wait_for(f"document.getElementById('peer-{m}')?.dataset.state === 'down'",
                     timeout=DOWN_WITHIN_S - (time.monotonic() - killed))
    assert browser.evaluate(f"{_cell(m, 4)}").startswith("down")


def test_the_page_passes_its_token_on(daemon_factory, browser):
    """With auth_token set, the page opened as /?token=... reads the JSON and the tail."""
    d = daemon_factory(extra_env={"STRATA_AUTH_TOKEN": "s3cret", "STRATA_NODE": "solo"})
    browser.navigate(f"http://{d.metrics}/?token=s3cret")
    browser.wait_for("document.getElementById('node').textContent === 'solo'")
    browser.wait_for(f"{_cell('solo', 3)} === 'master'")
    browser.wait_for("document.getElementById('tail-state').textContent === '(connected)'")
    with Client(d.grpc, token="s3cret") as cl:
        lsn = cl.put(b"with-a-token", b"ok")
    browser.wait_for(f"document.querySelector('#tail .event[data-lsn=\"{lsn}\"]') !== null")
    assert browser.evaluate("document.getElementById('write-state').textContent") == "accepted"
    assert browser.evaluate("document.getElementById('error').textContent") == ""
