"""HTTP serving: the batcher's batches, request checks, and the real server in a subprocess
queried over a socket, its answers equal to the library's."""

import asyncio
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

from colarec_jax.serving import serve
from colarec_jax.runtime.errors import RequestError
from colarec_jax.serving.recommender import Recommender

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def rec(tiny_workdir):
  return Recommender.load(tiny_workdir)


def batched_calls(count: int, max_batch: int, window_ms: float = 0.0, fail: bool = False):
  """Submits `count` queries at once to a Batcher over a fake ranker; returns (answers, the
  batches the ranker was called with)."""
  calls = []

  def answer(queries):
    calls.append(list(queries))
    if fail:
      raise RuntimeError("ranking failed")
    return [f"answer to {q}" for q in queries]

  async def main():
    batcher = serve.Batcher(answer, max_batch, window_ms)
    await batcher.start()
    try:
      return await asyncio.gather(*(batcher.submit(n) for n in range(count)),
                                  return_exceptions=True), batcher
    finally:
      await batcher.stop()

  (answers, batcher) = asyncio.run(main())
  return answers, calls, batcher


@pytest.mark.parametrize("count,max_batch,sizes", [(5, 8, [5]), (7, 3, [3, 3, 1]), (4, 1, [1] * 4)])
def test_queued_requests_share_calls(count, max_batch, sizes):
  answers, calls, batcher = batched_calls(count, max_batch)
  assert [len(c) for c in calls] == sizes
  assert [q for c in calls for q in c] == list(range(count))  # in arrival order
  assert answers == [f"answer to {n}" for n in range(count)]  # each gets its own answer
  assert (batcher.requests, batcher.batches) == (count, len(sizes))


def test_a_failed_call_fails_its_requests():
  answers, calls, _ = batched_calls(3, 8, fail=True)
  assert len(calls) == 1 and all(isinstance(a, RuntimeError) for a in answers)


@pytest.mark.parametrize("body,status,message", [
    (b"{bad", 400, "body: not valid JSON"),
    (b"[1, 2]", 400, "body: got a JSON list; expected an object"),
    (b'{"user": "u01", "n": 3}', 400, "n: unknown field; expected user, history, top_n"),
    (b'{"user": "nobody"}', 404, "user: 'nobody' is not a user of tiny"),
    (b'{"history": ["i01", "zz"]}', 404, "history: 'zz' is not an item of tiny"),
    (b'{"history": []}', 422, "history: got [], expected a non-empty list of item ids"),
    (b'{"user": "u01", "top_n": 0}', 422, "top_n: got 0, expected 1 to eval.beam_size = 20"),
    (b'{"user": "u01", "top_n": "5"}', 422, "top_n: got '5', expected 1 to eval.beam_size"),
    (b'{"user": "u01", "history": ["i01"]}', 422, "user: give exactly one of user"),
])
def test_bad_request_statuses(rec, body, status, message):
  """Parsed against the workdir's ids; statuses as the server sends them."""
  with pytest.raises(RequestError) as error:
    serve.parse_request(rec, body)
  assert message in str(error.value) and serve._status(error.value) == status


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def request(port, method, path, body=None):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
  try:
    conn.request(method, path, body=None if body is None else (
        body if isinstance(body, bytes) else json.dumps(body).encode()),
        headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())
  finally:
    conn.close()


@pytest.fixture(scope="module")
def server(tiny_workdir):
  """The real server (`--mode=serve`) in a subprocess, on a free local port."""
  port = free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "colarec_jax.main", f"--workdir={tiny_workdir}", "--mode=serve",
       f"--port={port}", "--batch_window_ms=20"], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while True:
    try:
      status, health = request(port, "GET", "/health")
      break
    except OSError:
      if process.poll() is not None or time.monotonic() > deadline:
        process.kill()
        pytest.fail(f"the server did not start: {process.communicate()[1][-3000:]}")
      time.sleep(0.5)
  yield port, process, (status, health)
  if process.poll() is None:
    process.kill()
    process.communicate()


def assert_same(served: dict, answer):
  assert served["items"] == answer.items and served["texts"] == answer.texts
  assert served["user"] == answer.user
  np.testing.assert_allclose(served["scores"], answer.scores, atol=1e-5)


def test_health(server):
  _, _, (status, health) = server
  assert status == 200 and health["status"] == "ok"
  assert (health["users"], health["items"], health["max_top_n"]) == (48, 36, 20)
  assert health["max_batch"] == 16 and health["checkpoint_epoch"] >= 1


def test_served_answers_equal_the_library(server, rec):
  port = server[0]
  status, served = request(port, "POST", "/recommend", {"user": "u03", "top_n": 5})
  assert status == 200
  assert_same(served, rec.recommend(user="u03", top_n=5))
  status, served = request(port, "POST", "/recommend", {"history": ["i04", "i29"]})
  assert status == 200
  assert_same(served, rec.recommend(history=["i04", "i29"]))


def test_concurrent_requests_each_get_their_own_answer(server, rec):
  port = server[0]
  bodies = [{"user": f"u{n:02d}", "top_n": 1 + n % 7} for n in range(12)] + [
      {"history": ["i01", f"i{n + 10}"]} for n in range(4)]
  with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
    replies = list(pool.map(lambda b: request(port, "POST", "/recommend", b), bodies))
  for body, (status, served) in zip(bodies, replies):
    assert status == 200
    assert_same(served, rec.recommend(**body))
  _, health = request(port, "GET", "/health")
  assert health["requests"] >= len(bodies) and health["batches"] <= health["requests"]


@pytest.mark.parametrize("body,status,message", [
    (b"{bad", 400, "body: not valid JSON"),
    ({"user": "nobody"}, 404, "user: 'nobody' is not a user of tiny (48 users, e.g. 'u00')"),
    ({"history": []}, 422, "history: got [], expected a non-empty list of item ids"),
    ({"user": "u01", "top_n": 50}, 422, "top_n: got 50, expected 1 to eval.beam_size = 20"),
])
def test_errors_over_http(server, body, status, message):
  got, reply = request(server[0], "POST", "/recommend", body)
  assert got == status and message in reply["error"]


@pytest.mark.parametrize("method,path,status", [("GET", "/recommend", 405),
                                                ("GET", "/nothing", 404)])
def test_unknown_path_and_method(server, method, path, status):
  conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=30)
  conn.request(method, path)
  assert conn.getresponse().status == status
  conn.close()


def test_sigterm_stops_it_cleanly(server):
  _, process, _ = server
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=60)
  assert process.returncode == 0, err[-3000:]
  assert "serving on http://127.0.0.1:" in out and "stopped serving (SIGTERM)" in out


def test_serve_flags_are_checked_first(tiny_workdir):
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main", f"--workdir={tiny_workdir}",
                           "--mode=serve", "--port=70000"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ), check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == "error: --port: got 70000, expected 1 to 65535"
