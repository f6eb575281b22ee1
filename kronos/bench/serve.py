"""``kronos bench serve``: the forecast service's throughput and latency, against a reference.

In one run, each in its own process on a free 127.0.0.1 port and measured one
after the other with the same client:

1. **service**: ``kronos serve`` (uvicorn) with a promoted artifact: the one
   under ``model_dir``, else a small one trained into a temporary MODEL_DIR
   with the training and promotion code ``kronos train`` uses (on the last
   year of the store's bars, validated on its last 60 days, up to the last bar,
   so every request is point in time);
2. **reference**: a plain FastAPI endpoint under the same uvicorn settings
   returning a fixed payload: the service's own answer, byte for byte.

The client (aiohttp, else httpx: asynchronous, ``concurrency`` keep-alive
connections, opened by an untimed warm-up round) sends ``requests`` GET /forecast requests cycling
through ``distinct`` symbol queries at the last bar, and times each one; req/s
counts the wall time of them all. The client shares the machine with the
server, so both figures include its cost; the server's own CPU time per
request (``cpu_ms_per_request``, from /proc), the client's
(``client_cpu_ms_per_request``) and the load average at the start say where
the time went and how much a busy machine weighed on them.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kronos.config import DataSettings
from kronos.errors import InputError, KronosError

if TYPE_CHECKING:
    from fastapi import FastAPI

TARGET_P99_MS = 100.0
TARGET_RPS = 300.0
START_TIMEOUT_S = 120.0
CLIENTS = ("aiohttp", "httpx")  # the first installed one; aiohttp costs the client far less
TRAIN_DAYS = 365  # the artifact trained for a run: the last year of bars ...
VALID_DAYS = 60  # ... its last 60 days validating it (a small model, quickly gated)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, params: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One GET (standard library): status and body; an HTTP error status is returned."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(url + query, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def _process(args: list[str], log: Path, health: str, what: str) -> Iterator[subprocess.Popen]:
    """A server process, ready when ``health`` answers 200; always stopped on the way out."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise KronosError(f"{what} exited with {proc.returncode} before ready:\n{tail}")
            try:
                if get(health, timeout=2.0)[0] == 200:
                    break
            except OSError:  # not listening yet (URLError is an OSError)
                pass
            if time.monotonic() > deadline:
                raise KronosError(f"{what} not ready after {START_TIMEOUT_S:.0f} s (log: {log})")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


Fetch = Callable[[dict], Awaitable[int]]  # one GET with these query parameters -> status


def client_name() -> str:
    """The asynchronous HTTP client the bench uses: aiohttp, else httpx (with its version)."""
    for name in CLIENTS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return f"{name} {getattr(module, '__version__', '?')}"
    raise InputError(f"kronos bench serve needs an async HTTP client: pip install {CLIENTS[0]}")


@asynccontextmanager
async def _client(url: str, concurrency: int) -> AsyncIterator[Fetch]:
    """GET ``url`` over at most ``concurrency`` keep-alive connections, with aiohttp or httpx."""
    if client_name().startswith("aiohttp"):
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=30.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def fetch(params: dict) -> int:
                async with session.get(url, params=params) as r:
                    await r.read()
                    return r.status

            yield fetch
        return
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def fetch_httpx(params: dict) -> int:
            return (await client.get(url, params=params)).status_code

        yield fetch_httpx


async def _fire(url: str, queries: list[dict], requests: int, concurrency: int, pid: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    async with _client(url, concurrency) as fetch:
        # open every connection before timing: one request each, untimed
        await asyncio.gather(*(fetch(queries[0]) for _ in range(concurrency)))

        async def worker() -> None:
            for i in counter:
                t0 = time.perf_counter()
                status = await fetch(queries[i % len(queries)])
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        started, load = datetime.now(UTC), os.getloadavg()[0]
        cpu0, t0, mine0 = _cpu_seconds(pid), time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds, cpu1 = time.perf_counter() - t0, _cpu_seconds(pid)
        mine = (time.process_time() - mine0) * 1000.0 / max(1, len(latencies))
    ms = np.asarray(latencies) * 1000.0
    cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000.0 / len(latencies)
    return {
        "started_at": started.isoformat(),
        "load_average": load,
        "cpu_ms_per_request": cpu,
        "client_cpu_ms_per_request": mine,
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "errors": errors,
    }


def _symbols(db: Path, source: str, data: DataSettings) -> tuple[list[str], str]:
    from kronos.data.store import Store

    with Store.open(db, read_only=True, lock_wait_s=data.lock_wait_s) as store:
        rows = store.con.execute(
            "SELECT DISTINCT symbol FROM bars WHERE source = ? ORDER BY symbol", [source]
        ).fetchall()
        last = store.con.execute("SELECT max(ts) FROM bars").fetchall()[0][0]
    if not rows:
        raise InputError(f"no bars of source {source} in {db}: run 'kronos data ingest' first")
    return [r[0] for r in rows], str(last)


def promoted_or_trained(
    db: Path, model: str, model_dir: Path | None, tmp: Path, source: str, data: DataSettings
) -> tuple[Path, Path, bool]:
    """(MODEL_DIR, artifact, trained here): the promoted artifact, else one trained into ``tmp``."""
    from kronos.data.store import Store
    from kronos.features.returns import returns_panel
    from kronos.models.artifacts import latest_artifact
    from kronos.models.registry import build, model_name
    from kronos.models.training import train_and_gate

    if model_dir is not None:
        found = latest_artifact(model_dir, model_name(model))
        if found is not None:
            return model_dir, found, False
    root = tmp / "models"
    with Store.open(db, read_only=True, lock_wait_s=data.lock_wait_s) as store:
        last = store.con.execute("SELECT max(ts) FROM bars").fetchall()[0][0]
        start = last - timedelta(days=TRAIN_DAYS)
        panel = returns_panel(store, last, start=start, source=source, settings=data)
    outcome = train_and_gate(build(model), panel, model_dir=root, valid_days=VALID_DAYS)
    if not outcome.decision.promoted:
        raise InputError(f"the {model} trained for the bench was not promoted: {outcome.decision}")
    return root, outcome.run_dir, True


def run_serve_bench(
    db: Path,
    *,
    requests: int = 500,
    concurrency: int = 20,
    model: str = "ewma",
    model_dir: Path | None = None,
    distinct: int = 10,
    source: str = "skfolio.sp500",
    data: DataSettings | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Service and reference measured in this run, as one JSON-ready dict."""
    say = on_step or (lambda _m: None)
    data = data or DataSettings()
    client = client_name()
    run = uuid.uuid4().hex
    began = datetime.now(UTC)
    names, last = _symbols(db, source, data)
    queries = [{"symbols": names[i % len(names)]} for i in range(max(1, distinct))]
    with tempfile.TemporaryDirectory(prefix="kronos-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        root, artifact, trained = promoted_or_trained(db, model, model_dir, tmp, source, data)
        say(f"artifact: {artifact} ({'trained for this run' if trained else 'promoted'})")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "kronos", "serve", "--port", str(port), "--db", str(db)]
        args += ["--model", model, "--model-dir", str(root)]
        with _process(args, tmp / "serve.log", f"{base}/health", "kronos serve") as proc:
            status, sample = get(f"{base}/forecast", queries[0])
            if status != 200:
                raise KronosError(f"kronos serve answered {status}: {sample[:500]!r}")
            say(f"service: {requests} requests, {concurrency} at a time")
            url = f"{base}/forecast"
            service = asyncio.run(_fire(url, queries, requests, concurrency, proc.pid))
            health = json.loads(get(f"{base}/health")[1])
        service["cache"] = health.get("cache")
        payload = tmp / "payload.json"
        payload.write_bytes(sample)
        port = free_port()
        ref_base = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "kronos.bench.serve", str(port), str(payload)]
        with _process(
            args, tmp / "reference.log", f"{ref_base}/health", "the reference app"
        ) as proc:
            say(f"reference: {requests} requests, {concurrency} at a time")
            url = f"{ref_base}/forecast"
            reference = asyncio.run(_fire(url, queries, requests, concurrency, proc.pid))
    service["run"] = reference["run"] = run
    met = service["p99_ms"] < TARGET_P99_MS and service["rps"] >= TARGET_RPS
    return {
        "run": run,
        "started_at": began.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "model": model,
        "artifact": str(artifact),
        "artifact_trained_for_run": trained,
        "asof": last,
        "requests": requests,
        "concurrency": concurrency,
        "distinct_queries": len(queries),
        "payload_bytes": len(sample),
        "client": client,
        "service": service,
        "reference": reference,
        "target": {"p99_ms": TARGET_P99_MS, "rps": TARGET_RPS},
        "target_met": bool(met and not service["errors"]),
    }


def reference_app(payload: bytes) -> FastAPI:
    """A plain FastAPI app: ``GET /forecast`` returns ``payload``, ``GET /health`` ok."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/forecast")
    async def forecast() -> Response:
        return Response(payload, media_type="application/json")

    return app


def _serve_reference(port: int, payload: Path) -> None:
    """Serve :func:`reference_app` as ``kronos serve`` serves (uvicorn, log level info)."""
    import uvicorn

    app = reference_app(payload.read_bytes())
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info")).run()


if __name__ == "__main__":  # python -m kronos.bench.serve PORT PAYLOAD (run_serve_bench starts it)
    _serve_reference(int(sys.argv[1]), Path(sys.argv[2]))
