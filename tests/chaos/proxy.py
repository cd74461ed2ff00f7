"""A small TCP proxy with a controllable delay and stall, for the links between nodes.

Each node of the chaos cluster advertises its replication listener at a proxy (`cluster.py`),
so every follower fetches from that node as leader through it. The nemesis then delays what the
proxy forwards (a slow link: each chunk leaves `delay_ms` after it arrived, in order) or stalls
it (nothing is forwarded until it resumes; the proxy stops reading once its queue is full, so
TCP backpressure reaches the sender).

All proxies share one asyncio event loop in one thread (`ProxyHub`); the control methods are
called from other threads and only set attributes the forwarding tasks read.
"""

import asyncio
import threading
import time
from typing import Dict, List, Optional, Tuple

CHUNK_BYTES = 65536
# Chunks queued per direction of one connection before the proxy stops reading from the sender.
QUEUE_CHUNKS = 64
# How often a stalled or delayed writer looks at the controls again.
POLL_S = 0.01
CONNECT_TIMEOUT_S = 3.0


class Proxy:
    """One listening address forwarding to one upstream address."""

    def __init__(self, hub: "ProxyHub", name: str, listen: Tuple[str, int], upstream: Tuple[str, int]):
        self.hub = hub
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.delay_ms = 0
        self.stalled = False
        self.connections = 0
        self.bytes_forwarded = 0
        self._server: Optional[asyncio.base_events.Server] = None
        self._open: List[asyncio.StreamWriter] = []

    # -- controls (any thread) --

    def set_delay(self, ms: int):
        self.delay_ms = max(0, int(ms))

    def stall(self):
        self.stalled = True

    def heal(self):
        self.delay_ms = 0
        self.stalled = False

    def describe(self) -> str:
        state = "stalled" if self.stalled else f"delay {self.delay_ms} ms" if self.delay_ms else "normal"
        return (f"{self.name} {self.listen[0]}:{self.listen[1]} -> {self.upstream[0]}:{self.upstream[1]} "
                f"({state}, {self.connections} connections, {self.bytes_forwarded} B)")

    # -- the event loop's side --

    async def _start(self):
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1],
                                                  reuse_address=True)

    async def _stop(self):
        if self._server is not None:
            self._server.close()
        for w in list(self._open):
            w.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        self.connections += 1
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            client_w.close()
            return
        writers = [client_w, up_w]
        self._open.extend(writers)
        try:
            await asyncio.gather(self._pipe(client_r, up_w, writers), self._pipe(up_r, client_w, writers),
                                 return_exceptions=True)
        finally:
            for w in writers:
                w.close()
                if w in self._open:
                    self._open.remove(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, writers):
        """Copies one direction through a bounded queue of (due time, chunk); when either side
        ends, both sockets of the connection are closed."""
        queue: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)

        async def read():
            try:
                while True:
                    data = await reader.read(CHUNK_BYTES)
                    if not data:
                        break
                    await queue.put((time.monotonic() + self.delay_ms / 1000, data))
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                await queue.put(None)

        async def write():
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    due, data = item
                    while self.stalled or time.monotonic() < due:
                        await asyncio.sleep(POLL_S)
                    writer.write(data)
                    await writer.drain()
                    self.bytes_forwarded += len(data)
            except OSError:
                pass
            finally:
                for w in writers:
                    w.close()

        reading = asyncio.ensure_future(read())
        await write()
        reading.cancel()


class ProxyHub:
    """The event loop thread of every proxy. Start it after entering the network namespace the
    proxies must listen in (a thread inherits its creator's namespace)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="chaos-proxies", daemon=True)
        self.proxies: Dict[str, Proxy] = {}

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> "ProxyHub":
        self.thread.start()
        return self

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, name: str, listen: Tuple[str, int], upstream: Tuple[str, int]) -> Proxy:
        proxy = Proxy(self, name, listen, upstream)
        self._call(proxy._start())
        self.proxies[name] = proxy
        return proxy

    def heal_all(self):
        for p in self.proxies.values():
            p.heal()

    def close(self):
        if not self.thread.is_alive():
            return
        for p in self.proxies.values():
            p.heal()
            try:
                self._call(p._stop(), timeout=5)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass

        async def cancel_all():
            current = asyncio.current_task()
            for t in asyncio.all_tasks():
                if t is not current:
                    t.cancel()

        try:
            self._call(cancel_all(), timeout=5)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
