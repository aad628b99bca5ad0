"""An HTTP endpoint for a trained model (Starlette + uvicorn: `pip install 'colarec-jax[serve]'`).

    POST /recommend  {"user": "196"} or {"history": ["50", "172"]}, optional "top_n" (default 10)
                     -> {"user": ..., "items": [...], "scores": [...], "texts": [...]}
    GET  /health     -> {"status": "ok", the checkpoint, sizes, and requests/batches served}

A bad request gets a 4xx answer {"error": "<field>: what was wrong"}: 400 for a body that is not
a JSON object of known fields, 404 for an unknown user or item id, 422 for a field's value that
cannot be used (an empty history, top_n outside 1..eval.beam_size, both user and history). Requests are checked on arrival; the good
ones wait in a queue, and a `Batcher` answers them together: the first opens a collection window
of `window_ms`, and everything that arrives within it, or while the previous call runs, joins
one beam-search call of up to `max_batch` rows (one worker thread drives the device).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
from collections.abc import Callable

from colarec_jax.runtime import interrupts
from colarec_jax.runtime.errors import RequestError, UsageError
from colarec_jax.serving.recommender import TOP_N, Query, Recommendation, Recommender

# The command line's defaults for --host, --port and --batch_window_ms.
HOST, PORT, WINDOW_MS = "127.0.0.1", 8000, 5.0

FIELDS = ("user", "history", "top_n")


class Batcher:
  """Collects queued queries into batches and answers each batch with one `answer` call.

  Args:
    answer: list of queries -> list of answers, run in one worker thread.
    max_batch: queries per call at most.
    window_ms: how long the first query of a batch waits for others.
  """

  def __init__(self, answer: Callable[[list[Query]], list[Recommendation]], max_batch: int,
               window_ms: float):
    self.answer, self.max_batch, self.window = answer, max_batch, window_ms / 1000
    self.queue: asyncio.Queue = asyncio.Queue()
    self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="colarec-rank")
    self.requests = self.batches = 0
    self.task: asyncio.Task | None = None

  async def submit(self, query: Query) -> Recommendation:
    future = asyncio.get_running_loop().create_future()
    await self.queue.put((query, future))
    return await future

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
      batch = [(q, f) for q, f in batch if not f.cancelled()]  # clients that went away
      if not batch:
        continue
      try:
        answers = await loop.run_in_executor(self.executor, self.answer, [q for q, _ in batch])
      except Exception as e:  # noqa: BLE001  (every waiting request gets the failure)
        for _, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      self.requests += len(batch)
      self.batches += 1
      for (_, future), answer in zip(batch, answers):
        if not future.done():
          future.set_result(answer)

  async def start(self) -> None:
    self.task = asyncio.get_running_loop().create_task(self.run())

  async def stop(self) -> None:
    if self.task is not None:
      self.task.cancel()
      with contextlib.suppress(asyncio.CancelledError):
        await self.task
    self.executor.shutdown(wait=True)


def parse_request(rec: Recommender, body: bytes, default_top_n: int = TOP_N) -> Query:
  """A request body as a checked query.

  Raises:
    RequestError: naming the field (or 'body') that is wrong.
  """
  try:
    data = json.loads(body)
  except ValueError as e:
    raise RequestError("body", f"not valid JSON ({e}); expected an object such as "
                       '{"user": "<id>"} or {"history": ["<item id>", ...]}') from None
  if not isinstance(data, dict):
    raise RequestError("body", f"got a JSON {type(data).__name__}; expected an object such as "
                       '{"user": "<id>"} or {"history": ["<item id>", ...]}')
  for key in data:
    if key not in FIELDS:
      raise RequestError(key, f"unknown field; expected {', '.join(FIELDS)}")
  return rec.query(data.get("user"), data.get("history"), data.get("top_n", default_top_n))


def _status(error: RequestError) -> int:
  if error.not_found:
    return 404
  return 422 if error.field in FIELDS else 400  # a value out of range; a malformed body


def create_app(rec: Recommender, *, max_batch: int, window_ms: float, on_ready=None):
  """The Starlette app: /recommend and /health, its batcher started and stopped with it.

  `on_ready()` is called once the model has answered a first (warm-up) query.
  """
  from starlette.applications import Starlette
  from starlette.responses import JSONResponse
  from starlette.routing import Route

  batcher = Batcher(rec.answer, max_batch, window_ms)

  async def recommend(request):
    try:
      query = parse_request(rec, await request.body())
    except RequestError as e:
      return JSONResponse({"error": str(e)}, status_code=_status(e))
    return JSONResponse((await batcher.submit(query)).to_json())

  async def health(_):
    return JSONResponse({
        "status": "ok", "checkpoint_epoch": rec.epoch, "users": rec.catalog.dataset.num_users,
        "items": rec.catalog.dataset.num_items, "max_top_n": rec.max_top_n,
        "max_batch": max_batch, "batch_window_ms": window_ms, "requests": batcher.requests,
        "batches": batcher.batches})

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

  return Starlette(routes=[Route("/recommend", recommend, methods=["POST"]),
                           Route("/health", health, methods=["GET"])], lifespan=lifespan)


def check_serve_flags(port: int, max_batch: int, window_ms: float) -> None:
  """Raises UsageError for a port, batch size or window out of range (before any work)."""
  if not 1 <= port <= 65535:
    raise UsageError("port", f"got {port}, expected 1 to 65535")
  if max_batch < 0:
    raise UsageError("max_batch", f"got {max_batch}, expected >= 1, or 0 for "
                     "eval.decode_batch_size")
  if window_ms < 0:
    raise UsageError("batch_window_ms", f"got {window_ms}, expected >= 0")


def require_server() -> None:
  """Raises UsageError when the `serve` extra is not installed."""
  try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
  except ImportError as e:
    raise UsageError("mode", f"serve needs {e.name}: pip install 'colarec-jax[serve]'") from None


def serve(rec: Recommender, *, host: str = HOST, port: int = PORT, max_batch: int = 0,
          window_ms: float = WINDOW_MS, log=print) -> None:
  """Serves `rec` until SIGINT or SIGTERM, `max_batch` requests per beam-search call at most
  (0: `rec.batch_size`, the rows of its compiled call)."""
  require_server()
  import uvicorn
  max_batch = min(max_batch or rec.batch_size, rec.batch_size)
  app = create_app(rec, max_batch=max_batch, window_ms=window_ms, on_ready=lambda: log(
      f"serving on http://{host}:{port} (POST /recommend, GET /health): batches of up to "
      f"{max_batch} requests, collected for {window_ms:g} ms"))
  # uvicorn handles SIGINT / SIGTERM (a graceful shutdown) and re-raises them when it is done:
  # here that is the end of the run, not a lost one (exit code 0).
  with interrupts.deferred():
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
  signum = interrupts.requested()
  log("stopped serving" + (f" ({interrupts.NAMES[signum]})" if signum else ""))
