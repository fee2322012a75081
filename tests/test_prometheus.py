"""PrometheusHandler: scraped over HTTP from the same server, parsed with prometheus-client."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from trio_wshandler import PrometheusHandler, RedisBackplane, WebSocketHandler
from trio_wshandler._demo import EchoHandler  # the echo server of `python -m trio_wshandler echo`

from .conftest import raw_http, running, scrape_metrics, wait_for, ws_url

parser = pytest.importorskip("prometheus_client.parser")


async def test_scrape_one_handler() -> None:
    ws = EchoHandler(heartbeat=None)
    async with running({"/": ws, "/metrics": PrometheusHandler(ws)}) as server:
        async with open_websocket_url(ws_url(server)) as a, open_websocket_url(ws_url(server)):
            for i in range(5):
                await a.send_message(f"hello {i}")
                assert await a.get_message() == f"hello {i}"
            ws.send_all("to all")
            assert await a.get_message() == "to all"
            samples, types, headers = await scrape_metrics(server.port)
            assert headers["content-type"].startswith("text/plain; version=")
            assert types["trio_wshandler_connections"] == "gauge"
            assert types["trio_wshandler_messages_sent"] == "counter"
            assert samples["trio_wshandler_connections", ()] == 2
            assert samples["trio_wshandler_upgrades_total", ()] == 2
            assert samples["trio_wshandler_messages_received_total", ()] == 5
            assert samples["trio_wshandler_messages_sent_total", ()] == 7  # 5 echoes + 2
            assert samples["trio_wshandler_broadcasts_total", ()] == 1
            stats = ws.stats()
            assert samples["trio_wshandler_sent_bytes_total", ()] == stats.bytes_sent
            assert samples["trio_wshandler_received_bytes_total", ()] == stats.bytes_received
            assert samples["trio_wshandler_send_queue_bytes", ()] == 0
            # process metrics from prometheus-client
            assert samples["process_resident_memory_bytes", ()] > 0
        # a refused upgrade and the Close codes, by label
        status, _, _ = await raw_http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 426
        await wait_for(lambda: len(ws) == 0)
        samples, _, _ = await scrape_metrics(server.port)
        assert samples["trio_wshandler_connections", ()] == 0
        assert samples["trio_wshandler_handshakes_refused_total", (("status", "426"),)] == 1
        assert samples["trio_wshandler_close_codes_received_total", (("code", "1000"),)] == 2
        assert samples["trio_wshandler_close_codes_sent_total", (("code", "1000"),)] == 2
        # the metrics path is not counted as the WebSocket handler's
        assert ("trio_wshandler_handshakes_refused_total", (("status", "200"),)) not in samples
        # HEAD gets the headers, other methods a 405
        status, headers, _ = await raw_http(
            server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        assert status == 405 and headers["allow"] == "GET, HEAD"


async def test_several_handlers_are_labelled() -> None:
    chat = WebSocketHandler(name="chat", heartbeat=None)
    feed = WebSocketHandler(name="feed", heartbeat=None)
    metrics = PrometheusHandler(chat, feed, process_metrics=False)
    async with running({"/chat": chat, "/feed": feed, "/metrics": metrics}) as server:
        async with (
            open_websocket_url(ws_url(server, "/chat")),
            open_websocket_url(ws_url(server, "/feed")) as f1,
            open_websocket_url(ws_url(server, "/feed")) as f2,
        ):
            await wait_for(lambda: len(feed) == 2)
            feed.send_all(b"tick")
            assert await f1.get_message() == b"tick" and await f2.get_message() == b"tick"
            samples, _, _ = await scrape_metrics(server.port)
    assert samples["trio_wshandler_connections", (("handler", "chat"),)] == 1
    assert samples["trio_wshandler_connections", (("handler", "feed"),)] == 2
    assert samples["trio_wshandler_messages_sent_total", (("handler", "chat"),)] == 0
    assert samples["trio_wshandler_messages_sent_total", (("handler", "feed"),)] == 2
    assert not any(name.startswith("process_") for name, _ in samples)


async def test_backplane_metrics_appear_with_a_backplane() -> None:
    ws = WebSocketHandler(backplane=RedisBackplane("redis://127.0.0.1:1"))
    text = PrometheusHandler(ws).exposition().decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["trio_wshandler_backplane_published"].samples[0].value == 0
    assert families["trio_wshandler_backplane_connected"].samples[0].value == 0
    plain = PrometheusHandler(WebSocketHandler()).exposition().decode()
    assert "backplane" not in plain


def test_handlers_are_checked() -> None:
    with pytest.raises(TypeError):
        PrometheusHandler()
    with pytest.raises(TypeError):
        PrometheusHandler(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct names"):
        PrometheusHandler(WebSocketHandler(), WebSocketHandler())


async def test_scrape_under_load_is_bounded() -> None:
    """A scrape with 200 live connections answers, and counts each of them once."""
    ws = WebSocketHandler(heartbeat=None)
    async with running({"/": ws, "/metrics": PrometheusHandler(ws)}) as server:
        async with trio.open_nursery() as nursery:
            ready = trio.Semaphore(0)
            done = trio.Event()

            async def client() -> None:
                async with open_websocket_url(ws_url(server)):
                    ready.release()
                    await done.wait()

            for _ in range(200):
                nursery.start_soon(client)
            for _ in range(200):
                await ready.acquire()
            samples, _, _ = await scrape_metrics(server.port)
            done.set()
    assert samples["trio_wshandler_connections", ()] == 200
    assert samples["trio_wshandler_upgrades_total", ()] == 200


def test_application_close_codes_are_grouped() -> None:
    ws = WebSocketHandler()
    for code in (1000, 3001, 3002, 4000, 4999):
        ws._counters.count(ws._counters.close_codes_received, code)
    text = PrometheusHandler(ws, process_metrics=False).exposition().decode()
    family = next(
        f
        for f in parser.text_string_to_metric_families(text)
        if f.name == "trio_wshandler_close_codes_received"
    )
    assert {s.labels["code"]: s.value for s in family.samples} == {
        "1000": 1,
        "3xxx": 2,
        "4xxx": 2,
    }


def test_worker_metrics_skip_temporary_bad_and_duplicate_files(tmp_path: Any) -> None:
    import json
    import time

    from trio_wshandler._worker_metrics import WorkerMetrics

    ws = WebSocketHandler()
    other = WorkerMetrics(WebSocketHandler(), str(tmp_path), 1)
    other.write()
    (tmp_path / ".worker-1.json.tmp").write_text((tmp_path / "worker-1.json").read_text())
    (tmp_path / "worker-1.tmp.json").write_text((tmp_path / "worker-1.json").read_text())
    (tmp_path / "worker-2.json").write_text(
        json.dumps({"worker": 2, "written": time.time(), "process": {}, "stats": {}})
    )
    (tmp_path / "worker-3.json").write_text("{half a file")
    text = WorkerMetrics(ws, str(tmp_path), 0).exposition().decode()
    samples = [
        (f.name, tuple(sorted(s.labels.items())))
        for f in parser.text_string_to_metric_families(text)
        for s in f.samples
    ]
    assert len(samples) == len(set(samples)), "a series appears twice"
    workers = {
        dict(labels)["worker"] for name, labels in samples if name == "trio_wshandler_connections"
    }
    assert workers == {"0", "1"}
    assert (tmp_path / "worker-0.json").exists()  # a scrape writes what it served
