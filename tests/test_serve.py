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
import threading
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


def start_server(workdir, *flags):
  """(port, process): `--mode=serve` of `workdir` in a subprocess on a free local port, once its
  /health answers."""
  port = free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "colarec_jax.main", f"--workdir={workdir}", "--mode=serve",
       f"--port={port}", *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  deadline = time.monotonic() + 300
  while True:
    try:
      request(port, "GET", "/health")
      return port, process
    except OSError:
      if process.poll() is not None or time.monotonic() > deadline:
        process.kill()
        pytest.fail(f"the server did not start: {process.communicate()[1][-3000:]}")
      time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tiny_workdir):
  """The real server (`--mode=serve`) in a subprocess, on a free local port."""
  port, process = start_server(tiny_workdir, "--batch_window_ms=20")
  yield port, process, request(port, "GET", "/health")
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


# Issue 36: bounded flags, limits, auth, JSON errors, overload, stalls, disconnects, shutdown.


@pytest.mark.parametrize("flag,message", [
    ("--batch_window_ms=nan", "--batch_window_ms: got nan, expected 0 to 1000"),
    ("--batch_window_ms=inf", "--batch_window_ms: got inf, expected 0 to 1000"),
    ("--batch_window_ms=1e9", "--batch_window_ms: got 1000000000.0, expected 0 to 1000"),
    ("--max_batch=100000", "--max_batch: got 100000, expected >= 1 (at most 4096)"),
    ("--max_body_bytes=0", "--max_body_bytes: got 0, expected 1 to"),
    ("--max_queue=0", "--max_queue: got 0, expected 1 to"),
    ("--auth_token_file=/nonexistent/token", "--auth_token_file: cannot read /nonexistent/token"),
])
def test_every_serve_flag_is_bounded(tiny_workdir, flag, message):
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main", f"--workdir={tiny_workdir}",
                           "--mode=serve", flag], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2 and result.stderr.strip() == f"error: {message}" or (
      result.returncode == 2 and result.stderr.strip().startswith(f"error: {message}")), \
      result.stderr[-2000:]


def test_a_port_in_use_is_said_before_the_model_loads(tiny_workdir):
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "colarec_jax.main",
                             f"--workdir={tiny_workdir}", "--mode=serve", f"--port={port}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == (f"error: --port: cannot listen on 127.0.0.1:{port}: Address "
                                   "already in use")
  assert "serving on" not in result.stdout and "checkpoint" not in result.stdout


def test_deeply_nested_json_is_a_400(rec):
  with pytest.raises(RequestError, match="body: JSON nested too deep") as e:
    serve.parse_request(rec, b"[" * 100_000 + b"]" * 100_000)
  assert serve._status(e.value) == 400


def test_an_echoed_id_is_cut(rec):
  with pytest.raises(RequestError) as e:
    serve.parse_request(rec, json.dumps({"user": "x" * 1_000_000}).encode())
  assert len(str(e.value)) < 500 and "(1000002 characters)" in str(e.value)


def test_a_dead_batcher_is_reported_and_fails_requests_at_once():
  async def main():
    batcher = serve.Batcher(lambda qs: qs, 4, 0.0)
    assert batcher.state == "not started"
    await batcher.start()
    assert batcher.state == "running"
    batcher.task.cancel()
    with pytest.raises(asyncio.CancelledError):
      await batcher.task
    assert batcher.state == "stopped"
    with pytest.raises(serve.Unavailable, match="batcher stopped"):
      await batcher.submit("q")
  asyncio.run(main())


def gated():
  """(gate, answer): an answer function that returns its queries once the gate is set."""
  gate = threading.Event()

  def answer(queries):
    assert gate.wait(30)
    return list(queries)

  return gate, answer


def test_stopping_fails_the_queued_requests():
  """A request still queued at shutdown gets 503 at once, not a hang."""
  async def main():
    gate, answer = gated()
    batcher = serve.Batcher(answer, 1, 0.0)
    await batcher.start()
    first = asyncio.ensure_future(batcher.submit("first"))  # the call in flight
    await asyncio.sleep(0.1)
    queued = asyncio.ensure_future(batcher.submit("queued"))
    await asyncio.sleep(0.1)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.1)
    gate.set()
    await stopping
    with pytest.raises(serve.Unavailable, match="shutting down"):
      await queued
    return await first
  assert asyncio.run(main()) == "first"


def test_a_full_queue_refuses_at_once():
  async def main():
    gate, answer = gated()
    batcher = serve.Batcher(answer, 1, 0.0, max_queue=1)
    await batcher.start()
    waiting = []
    for n in range(2):  # the first is taken into a call (held by the gate), the second queues
      waiting.append(asyncio.ensure_future(batcher.submit(n)))
      await asyncio.sleep(0.1)
    with pytest.raises(serve.Unavailable, match="1 requests are waiting already"):
      await batcher.submit(2)
    gate.set()
    answers = await asyncio.gather(*waiting)
    await batcher.stop()
    return answers, batcher.refused
  assert asyncio.run(main()) == ([0, 1], 1)


def raw_request(port, method, path, body=b"", headers=None):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()
  finally:
    conn.close()


def start_guarded(tiny_workdir, tmp_path_factory):
  """A server with a bearer token, a 4 KB body limit and a queue of 1 (one request per call)."""
  token_file = tmp_path_factory.mktemp("token") / "token"
  token_file.write_text("s3cret-token\n")
  return start_server(tiny_workdir, "--max_body_bytes=4096", "--max_queue=1", "--max_batch=1",
                      "--batch_window_ms=0", f"--auth_token_file={token_file}")


@pytest.fixture(scope="module")
def guarded(tiny_workdir, tmp_path_factory):
  port, process = start_guarded(tiny_workdir, tmp_path_factory)
  yield port, process
  if process.poll() is None:
    process.kill()
    process.communicate()


AUTH = {"Authorization": "Bearer s3cret-token", "Content-Type": "application/json"}


def test_the_token_guards_recommend_not_health(guarded):
  port = guarded[0]
  status, health = request(port, "GET", "/health")
  assert status == 200 and health["auth"] and health["batcher"] == "running"
  for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
    status, got, body = raw_request(port, "POST", "/recommend", b'{"user": "u01"}', headers)
    assert status == 401 and "authorization:" in json.loads(body)["error"]
    assert got.get("www-authenticate") == "Bearer"
  status, _, body = raw_request(port, "POST", "/recommend", b'{"user": "u01"}', AUTH)
  assert status == 200 and len(json.loads(body)["items"]) == 10


def test_a_body_over_the_limit_is_a_413(guarded):
  body = json.dumps({"user": "u01", "history": ["i01"] * 2000}).encode()
  status, _, reply = raw_request(guarded[0], "POST", "/recommend", body, AUTH)
  assert status == 413 and "larger than 4096 bytes" in json.loads(reply)["error"]


@pytest.mark.parametrize("method,path,status", [("GET", "/recommend", 405),
                                                ("GET", "/nothing", 404),
                                                ("PUT", "/health", 405)])
def test_404_and_405_answer_json(guarded, method, path, status):
  got, _, body = raw_request(guarded[0], method, path)
  assert got == status and "expected POST /recommend or GET /health" in json.loads(body)["error"]


def test_a_trailing_slash_is_answered_not_redirected(guarded):
  status, _, body = raw_request(guarded[0], "POST", "/recommend/", b'{"user": "u02"}', AUTH)
  assert status == 200 and json.loads(body)["user"] == "u02"


def test_overload_is_a_503_with_retry_after(guarded):
  port = guarded[0]
  with concurrent.futures.ThreadPoolExecutor(48) as pool:
    replies = list(pool.map(lambda n: raw_request(
        port, "POST", "/recommend", json.dumps({"user": f"u{n % 48:02d}"}).encode(), AUTH),
        range(96)))
  statuses = [status for status, _, _ in replies]
  assert set(statuses) <= {200, 503} and statuses.count(503) >= 1, statuses
  refused = [(h, b) for s, h, b in replies if s == 503]
  assert refused[0][0].get("retry-after") == "1" and "busy:" in json.loads(refused[0][1])["error"]
  _, health = request(port, "GET", "/health")
  assert health["refused_busy"] >= statuses.count(503)


def test_a_stalled_connection_is_dropped(guarded):
  with socket.create_connection(("127.0.0.1", guarded[0]), timeout=30) as conn:
    conn.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    start = time.monotonic()
    assert conn.recv(1024) == b""  # closed by the server
    assert time.monotonic() - start < serve.HEAD_SECONDS + 5


def _http_cases():
  from test_bad_inputs import HTTP_CASES
  return HTTP_CASES


@pytest.mark.parametrize("case,what,method,path,body,token,status,expected", _http_cases(),
                         ids=[c[0] for c in _http_cases()])
def test_http_mistakes_get_one_json_error(guarded, case, what, method, path, body, token, status,
                                          expected):
  headers = AUTH if token else {"Content-Type": "application/json"}
  got, _, reply = raw_request(guarded[0], method, path, body, headers)
  assert got == status and expected in json.loads(reply)["error"], (got, reply[:500])


def test_disconnects_leave_no_tracebacks_and_sigterm_ends_it(tiny_workdir, tmp_path_factory):
  port, process = start_guarded(tiny_workdir, tmp_path_factory)  # its own: this one stops it
  for n in range(200):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
      body = b'{"user": "u01"}'
      conn.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token"
                   b"\r\nContent-Length: " + str(len(body) + 50 * (n % 2)).encode()
                   + b"\r\n\r\n" + body)
  assert request(port, "GET", "/health")[0] == 200  # still serving
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=30)
  assert process.returncode == 0 and "stopped serving (SIGTERM)" in out
  assert "Traceback" not in err, err[-3000:]
