"""An HTTP endpoint for a trained model (Starlette + uvicorn: `pip install 'colarec-jax[serve]'`).

    POST /recommend  {"user": "196"} or {"history": ["50", "172"]}, optional "top_n" (default 10)
                     -> {"user": ..., "items": [...], "scores": [...], "texts": [...]}
    GET  /health     -> {"status": "ok", the checkpoint, sizes, the batcher's state, counters}

Every answer is JSON. A bad request gets {"error": "<field>: what was wrong"} (echoed input cut to
a few hundred characters): 400 for a body that is not a JSON object of known fields (or nested
too deep), 401 without the bearer token when one is set, 404 for an unknown user or item id or
path, 405 for another method, 413 for a body over `max_body_bytes`, 422 for a field's value that
cannot be used (an empty history, top_n outside 1..the beam size, both user and history), and
503 while the queue is full, the batcher has stopped or the server is shutting down. Requests are
checked on arrival; the good ones wait in a bounded queue, and a `Batcher` answers them together:
the first opens a collection window of `window_ms`, and everything that arrives within it, or
while the previous call runs, joins one beam-search call of up to `max_batch` rows (one worker
thread drives the device). A request's head must arrive within `HEAD_SECONDS` and its body within
`BODY_SECONDS`, so stalled connections are dropped, and at most `max_connections` are open.

The server binds its socket before the model is loaded (`bind`), so a port in use is reported
first. It shares the workdir with other readers; `--mode=add_items` (a writer) is refused while it
runs: stop it, add the items, start it again to serve them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import math
import os
import socket
from collections.abc import Callable

from colarec_jax.runtime import interrupts
from colarec_jax.runtime.errors import RequestError, UsageError
from colarec_jax.serving.recommender import (
  MAX_BATCH,
  MAX_ECHO,
  TOP_N,
  Query,
  Recommendation,
  Recommender,
  echo,
)

# The command line's defaults for --host, --port, --batch_window_ms, --max_body_bytes, --max_queue.
HOST, PORT, WINDOW_MS = "127.0.0.1", 8000, 5.0
MAX_BODY_BYTES, MAX_QUEUE = 1 << 20, 1024
MAX_WINDOW_MS = 1000.0  # a longer window only delays answers; nan, inf or days hung the batcher
HEAD_SECONDS, BODY_SECONDS = 10.0, 10.0  # a request's head and body must arrive within these
ANSWER_SECONDS = 60.0  # a queued request not answered by then gets 503 (a stuck device)
SHUTDOWN_SECONDS = 5.0  # pending requests are failed (503) rather than waited for past this
MAX_CONNECTIONS = 512
TOKEN_ENV = "COLAREC_SERVE_TOKEN"

FIELDS = ("user", "history", "top_n")


class Unavailable(Exception):
  """The request cannot be answered now (503): queue full, batcher stopped, shutting down."""


class Batcher:
  """Collects queued queries into batches and answers each batch with one `answer` call.

  Args:
    answer: list of queries -> list of answers, run in one worker thread.
    max_batch: queries per call at most.
    window_ms: how long the first query of a batch waits for others.
    max_queue: queries waiting at most; more are refused (`Unavailable`), not queued.
  """

  def __init__(self, answer: Callable[[list[Query]], list[Recommendation]], max_batch: int,
               window_ms: float, max_queue: int = MAX_QUEUE):
    self.answer, self.max_batch, self.window = answer, max_batch, window_ms / 1000
    self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
    self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="colarec-rank")
    self.requests = self.batches = self.refused = 0
    self.task: asyncio.Task | None = None
    self.stopping = False

  @property
  def state(self) -> str:
    """'running', 'not started', 'stopping', or 'stopped: <why>' when the loop died."""
    if self.stopping:
      return "stopping"
    if self.task is None:
      return "not started"
    if self.task.done():
      error = None if self.task.cancelled() else self.task.exception()
      return f"stopped: {type(error).__name__}: {error}" if error else "stopped"
    return "running"

  async def submit(self, query: Query) -> Recommendation:
    """The query's answer, or `Unavailable` when it cannot be had (in time)."""
    if self.state != "running":
      raise Unavailable(f"the server cannot rank now (batcher {self.state})")
    future = asyncio.get_running_loop().create_future()
    try:
      self.queue.put_nowait((query, future))
    except asyncio.QueueFull:
      self.refused += 1
      raise Unavailable(f"{self.queue.maxsize} requests are waiting already; retry "
                        "shortly") from None
    try:
      return await asyncio.wait_for(future, ANSWER_SECONDS)
    except TimeoutError:
      raise Unavailable(f"no answer within {ANSWER_SECONDS:g} s") from None

  async def _collect(self) -> list:
    batch = [await self.queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + self.window
    while len(batch) < self.max_batch:
      if self.queue.empty():
        remaining = deadline - loop.time()
        if remaining <= 0:
          break
        try:
          batch.append(await asyncio.wait_for(self.queue.get(), remaining))
        except TimeoutError:
          break
      else:
        batch.append(self.queue.get_nowait())
    return batch

  async def run(self) -> None:
    """The batching loop (until cancelled)."""
    loop = asyncio.get_running_loop()
    while True:
      batch = await self._collect()
      batch = [(q, f) for q, f in batch if not f.done()]  # clients that went away or timed out
      if not batch:
        continue
      call = loop.run_in_executor(self.executor, self.answer, [q for q, _ in batch])
      try:
        self._deliver(batch, await asyncio.shield(call))
      except asyncio.CancelledError:
        # Shutting down mid-call: the call finishes (within SHUTDOWN_SECONDS) and its requests
        # get their answers; those it cannot answer in time get 503, never a hang.
        try:
          self._deliver(batch, await asyncio.wait_for(call, SHUTDOWN_SECONDS))
        except Exception:  # noqa: BLE001
          self._deliver(batch, Unavailable("the server is shutting down"))
        raise
      except Exception as e:  # noqa: BLE001  (every waiting request gets the failure)
        self._deliver(batch, e)

  def _deliver(self, batch: list, answers) -> None:
    """Each request's answer, or `answers` (an exception) to all of them."""
    failed = isinstance(answers, BaseException)
    if not failed:
      self.requests += len(batch)
      self.batches += 1
    for n, (_, future) in enumerate(batch):
      if not future.done():
        if failed:
          future.set_exception(answers)
        else:
          future.set_result(answers[n])

  async def start(self) -> None:
    self.task = asyncio.get_running_loop().create_task(self.run())

  async def stop(self) -> None:
    """Stops taking requests, fails the queued ones (503) and waits for the running call."""
    self.stopping = True
    if self.task is not None:
      self.task.cancel()
      with contextlib.suppress(asyncio.CancelledError):
        await self.task
    while not self.queue.empty():
      _, future = self.queue.get_nowait()
      if not future.done():
        future.set_exception(Unavailable("the server is shutting down"))
    self.executor.shutdown(wait=True, cancel_futures=True)


def parse_request(rec: Recommender, body: bytes, default_top_n: int = TOP_N) -> Query:
  """A request body as a checked query.

  Raises:
    RequestError: naming the field (or 'body') that is wrong.
  """
  example = '{"user": "<id>"} or {"history": ["<item id>", ...]}'
  try:
    data = json.loads(body)
  except RecursionError:
    raise RequestError("body", f"JSON nested too deep; expected an object such as {example}") \
        from None
  except ValueError as e:
    raise RequestError("body", f"not valid JSON ({str(e)[:MAX_ECHO]}); expected an object such "
                       f"as {example}") from None
  if not isinstance(data, dict):
    raise RequestError("body", f"got a JSON {type(data).__name__}; expected an object such as "
                       f"{example}")
  for key in data:
    if key not in FIELDS:
      raise RequestError(echo(key)[1:-1] if isinstance(key, str) else "body",
                         f"unknown field; expected {', '.join(FIELDS)}")
  return rec.query(data.get("user"), data.get("history"), data.get("top_n", default_top_n))


def _status(error: RequestError) -> int:
  if error.not_found:
    return 404
  return 422 if error.field in FIELDS else 400  # a value out of range; a malformed body


def read_token(token_file: str = "") -> str:
  """The bearer token `/recommend` requires: the file's first line, else $COLAREC_SERVE_TOKEN,
  else '' (no token: anyone who reaches the port may ask).

  Raises:
    UsageError: the file cannot be read or holds no token.
  """
  if token_file:
    try:
      with open(token_file, encoding="utf-8") as f:
        token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
      raise UsageError("auth_token_file", f"cannot read {token_file}: {e}") from None
    if not token:
      raise UsageError("auth_token_file", f"{token_file} is empty; expected the token on its "
                       "first line")
    return token
  return os.environ.get(TOKEN_ENV, "").strip()


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request, and the server, may take (see the module docstring)."""

  max_body_bytes: int = MAX_BODY_BYTES
  max_queue: int = MAX_QUEUE
  token: str = ""


def create_app(rec: Recommender, *, max_batch: int, window_ms: float, limits: Limits = Limits(),
               on_ready=None):
  """The Starlette app: /recommend and /health, its batcher started and stopped with it.

  `on_ready()` is called once the model has answered a first (warm-up) query.
  """
  from starlette.applications import Starlette
  from starlette.exceptions import HTTPException
  from starlette.requests import ClientDisconnect
  from starlette.responses import JSONResponse
  from starlette.routing import Route

  batcher = Batcher(rec.answer, max_batch, window_ms, limits.max_queue)
  expected = f"Bearer {limits.token}".encode() if limits.token else b""

  def error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)

  async def read_body(request) -> bytes:
    """The body, refused past `max_body_bytes` (declared or sent) and after BODY_SECONDS."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
      raise _TooLarge()
    chunks, size = [], 0
    async with asyncio.timeout(BODY_SECONDS):
      async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
          raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)

  async def recommend(request):
    # Compared in constant time: the answer's timing says nothing about the token.
    if expected and not hmac.compare_digest(
        request.headers.get("authorization", "").encode(), expected):
      return error(401, "authorization: expected the header 'Authorization: Bearer <token>' "
                   "with the server's token", **{"WWW-Authenticate": "Bearer"})
    try:
      body = await read_body(request)
    except _TooLarge:
      return error(413, f"body: larger than {limits.max_body_bytes} bytes (--max_body_bytes)")
    except TimeoutError:
      return error(408, f"body: not received within {BODY_SECONDS:g} s")
    except ClientDisconnect:
      return error(400, "body: the client went away")  # nobody reads it; nothing to log
    try:
      query = parse_request(rec, body)
    except RequestError as e:
      return error(_status(e), str(e)[:4 * MAX_ECHO])
    try:
      return JSONResponse((await batcher.submit(query)).to_json())
    except Unavailable as e:
      return error(503, f"busy: {e}", **{"Retry-After": "1"})

  async def health(_):
    state = batcher.state
    return JSONResponse({
        "status": "ok" if state == "running" else "unavailable", "batcher": state,
        "checkpoint_epoch": rec.epoch, "users": rec.catalog.dataset.num_users,
        "items": rec.catalog.dataset.num_items, "max_top_n": rec.max_top_n,
        "max_batch": max_batch, "batch_window_ms": window_ms, "queued": batcher.queue.qsize(),
        "max_queue": limits.max_queue, "requests": batcher.requests, "batches": batcher.batches,
        "refused_busy": batcher.refused, "auth": bool(expected)},
        status_code=200 if state == "running" else 503)

  async def http_error(_, exc: HTTPException):
    what = {404: "path: not found; expected POST /recommend or GET /health",
            405: "method: not allowed; expected POST /recommend or GET /health"}
    return error(exc.status_code, what.get(exc.status_code, str(exc.detail)))

  @contextlib.asynccontextmanager
  async def lifespan(_):
    first = str(rec.catalog.dataset.user_ids[1])
    await asyncio.get_running_loop().run_in_executor(  # compile before the first request
        batcher.executor, rec.answer, [rec.query(user=first)])
    await batcher.start()
    if on_ready is not None:
      on_ready()
    yield
    await batcher.stop()

  routes = [Route(path, recommend, methods=["POST"]) for path in ("/recommend", "/recommend/")]
  app = Starlette(routes=routes + [Route("/health", health, methods=["GET"])],
                  exception_handlers={HTTPException: http_error}, lifespan=lifespan)
  app.router.redirect_slashes = False  # POST /recommend/ is answered, not redirected
  app.state.batcher = batcher
  return app


class _TooLarge(Exception):
  pass


def check_serve_flags(port: int, max_batch: int, window_ms: float,
                      max_body_bytes: int = MAX_BODY_BYTES, max_queue: int = MAX_QUEUE) -> None:
  """Raises UsageError for a flag out of range (before any work)."""
  if not 1 <= port <= 65535:
    raise UsageError("port", f"got {port}, expected 1 to 65535")
  if not 0 <= max_batch <= MAX_BATCH:
    raise UsageError("max_batch", f"got {max_batch}, expected >= 1 (at most {MAX_BATCH}), or 0 "
                     "for eval.decode_batch_size")
  if not (math.isfinite(window_ms) and 0 <= window_ms <= MAX_WINDOW_MS):
    raise UsageError("batch_window_ms", f"got {window_ms}, expected 0 to {MAX_WINDOW_MS:g}")
  if not 1 <= max_body_bytes <= 1 << 30:
    raise UsageError("max_body_bytes", f"got {max_body_bytes}, expected 1 to {1 << 30}")
  if not 1 <= max_queue <= 1 << 20:
    raise UsageError("max_queue", f"got {max_queue}, expected 1 to {1 << 20}")


def require_server() -> None:
  """Raises UsageError when the `serve` extra is not installed."""
  try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
  except ImportError as e:
    raise UsageError("mode", f"serve needs {e.name}: pip install 'colarec-jax[serve]'") from None


def bind(host: str, port: int) -> socket.socket:
  """The listening socket, bound before the model loads: a port in use is one error, first.

  Raises:
    UsageError: the address cannot be bound.
  """
  try:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
  except socket.gaierror as e:
    raise UsageError("host", f"cannot resolve {host!r}: {e.strerror}") from None
  family, _, _, _, address = infos[0]
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(MAX_CONNECTIONS)
  except OSError as e:
    sock.close()
    raise UsageError("port", f"cannot listen on {host}:{port}: {e.strerror or e}") from None
  sock.set_inheritable(True)
  return sock


def _protocol():
  """uvicorn's HTTP/1.1 protocol, closing a connection whose request head has not arrived within
  HEAD_SECONDS (uvicorn itself times out only idle keep-alive connections)."""
  from uvicorn.protocols.http.h11_impl import H11Protocol

  class HeadTimeout(H11Protocol):
    def connection_made(self, transport):
      super().connection_made(transport)
      self._head_deadline = self.loop.call_later(HEAD_SECONDS, self._head_late)

    def _head_late(self):
      if self.cycle is None and not self.transport.is_closing():
        self.transport.close()

    def handle_events(self):
      super().handle_events()
      if self.cycle is not None:
        self._head_deadline.cancel()

    def connection_lost(self, exc):
      self._head_deadline.cancel()
      super().connection_lost(exc)

  return HeadTimeout


def serve(rec: Recommender, *, sock: socket.socket, max_batch: int = 0,
          window_ms: float = WINDOW_MS, limits: Limits = Limits(), log=print) -> None:
  """Serves `rec` on the bound `sock` until SIGINT or SIGTERM, `max_batch` requests per
  beam-search call at most (0: `rec.batch_size`, the rows of its compiled call)."""
  require_server()
  import uvicorn
  max_batch = min(max_batch or rec.batch_size, rec.batch_size)
  host, port = sock.getsockname()[:2]
  app = create_app(rec, max_batch=max_batch, window_ms=window_ms, limits=limits,
                   on_ready=lambda: log(
                       f"serving on http://{host}:{port} (POST /recommend, GET /health): batches "
                       f"of up to {max_batch} requests, collected for {window_ms:g} ms"
                       + (", bearer token required" if limits.token else "")))
  config = uvicorn.Config(app, log_level="warning", access_log=False, http=_protocol(),
                          limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
                          timeout_graceful_shutdown=SHUTDOWN_SECONDS)
  # uvicorn handles SIGINT / SIGTERM (a graceful shutdown) and re-raises them when it is done:
  # here that is the end of the run, not a lost one (exit code 0).
  with interrupts.deferred():
    uvicorn.Server(config).run(sockets=[sock])
  signum = interrupts.requested()
  log("stopped serving" + (f" ({interrupts.NAMES[signum]})" if signum else ""))
