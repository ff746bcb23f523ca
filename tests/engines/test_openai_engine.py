"""OpenAIEngine: against a local fault-injection server (fast), then against a real
``vllm serve`` process started once for the module (``@pytest.mark.engine``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pipeline.engines.base import ChatRequest, RequestCache, run_cached
from pipeline.engines.openai import OpenAIEngine, parse_retry_after
from schemas.errors import EngineError

KEY_ENV = "PREFCURATE_TEST_OPENAI_KEY"


def req(text: str, n: int = 1, **kw) -> ChatRequest:
    return ChatRequest(messages=(("user", text),), n=n, seed=kw.pop("seed", 0), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- fault server


class FaultServer:
    """A scripted OpenAI-compatible server on 127.0.0.1.

    ``script(marker, *actions)``: the requests whose last message is ``marker`` get these
    answers, one per attempt, then successes. Actions: an int status (with a JSON error
    body), ``(status, headers, message)``, ``"garbage"`` (200, not JSON), ``("hang", s)``
    (no answer for s seconds), ``("delay", s)`` (a success after s seconds).
    """

    def __init__(self) -> None:
        self.scripts: dict[str, list] = {}
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.stopping = threading.Event()
        self.require_auth: str | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def do_GET(self):
                if self.path.endswith("/models"):
                    body = {"data": [{"id": "m", "max_model_len": 1234}]}
                    self._send(200, json.dumps(body).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                marker = body["messages"][-1]["content"]
                auth = self.headers.get("Authorization")
                with outer.lock:
                    outer.seen.append(
                        {"marker": marker, "auth": auth, "body": body, "t": time.monotonic()}
                    )
                    actions = outer.scripts.get(marker)
                    action = actions.pop(0) if actions else "ok"
                if isinstance(action, tuple) and action[0] == "hang":  # not counted in flight
                    outer.stopping.wait(action[1])
                    return self._send(*self._answer("ok", body, marker, auth))
                with outer.lock:
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                try:
                    status, payload, headers = self._answer(action, body, marker, auth)
                finally:  # before the answer is sent: the client may then send another
                    with outer.lock:
                        outer.inflight -= 1
                self._send(status, payload, headers)

            def _answer(self, action, body, marker, auth):
                if outer.require_auth and auth != f"Bearer {outer.require_auth}":
                    given = (auth or "").removeprefix("Bearer ")
                    msg = f"Incorrect API key provided: {given}"
                    return 401, json.dumps({"error": {"message": msg}}).encode(), {}
                if isinstance(action, int):
                    action = (action, {}, f"scripted {action}")
                if isinstance(action, tuple) and action[0] == "delay":
                    time.sleep(action[1])
                    action = "ok"
                if action == "garbage":
                    return 200, b"<html>502 Bad Gateway</html>", {}
                if isinstance(action, tuple):
                    status, headers, msg = action
                    err = {"error": {"message": msg, "type": "Error", "code": status}}
                    return status, json.dumps(err).encode(), headers
                n = body.get("n", 1)
                choices = []
                for i in reversed(range(n)):  # out of order on purpose
                    c = {
                        "index": i,
                        "message": {"role": "assistant", "content": f"{marker} #{i}"},
                        "finish_reason": "stop" if i % 2 == 0 else "length",
                    }
                    if body.get("logprobs"):
                        k = body.get("top_logprobs", 1)
                        c["logprobs"] = {
                            "content": [
                                {
                                    "token": f"t{s}",
                                    "logprob": -0.1 * s,
                                    "top_logprobs": [
                                        {"token": f"alt{s}.{j}", "logprob": -1.0 - j}
                                        for j in range(k)
                                    ],
                                }
                                for s in range(10 + i)
                            ]
                        }
                    choices.append(c)
                out = {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": choices,
                    "usage": {
                        "prompt_tokens": 7,
                        "completion_tokens": 5 * n + 1,
                        "total_tokens": 8 + 5 * n,
                    },
                }
                return 200, json.dumps(out).encode(), {}

        # a listen backlog above the client's concurrency (the default 5 resets the rest)
        server = type(
            "Server", (ThreadingHTTPServer,), {"request_queue_size": 128, "daemon_threads": True}
        )
        self.httpd = server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def script(self, marker: str, *actions) -> None:
        self.scripts[marker] = list(actions)

    def attempts(self, marker: str) -> list[dict]:
        return [s for s in self.seen if s["marker"] == marker]

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.seen.clear()
            self.max_inflight = 0
            self.require_auth = None

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    srv = FaultServer()
    yield srv
    srv.close()


@pytest.fixture
def fault(server):
    server.reset()
    yield server
    server.reset()


def engine(srv: FaultServer, **kw) -> OpenAIEngine:
    kw = {"timeout_s": 5.0, "max_retries": 5, "backoff_s": 0.01, **kw}
    return OpenAIEngine("m", srv.url, **kw)


# --------------------------------------------------------------------------- faults


def test_retries_through_every_fault_then_succeeds(fault):
    fault.script("q", (429, {"Retry-After": "1"}, "slow down"), 500, 503, "garbage", ("hang", 3.0))
    eng = engine(fault, timeout_s=0.5)
    t0 = time.monotonic()
    [c] = eng.complete([req("q", n=2)])
    took = time.monotonic() - t0
    assert c.error is None and c.texts == ["q #0", "q #1"]
    assert len(fault.attempts("q")) == 6  # 5 faults + the success
    assert (eng.stats.attempts, eng.stats.retries, eng.stats.failed) == (6, 5, 0)
    seen = fault.attempts("q")
    assert seen[1]["t"] - seen[0]["t"] >= 0.95  # Retry-After: 1 honoured (backoff is 0.01)
    assert took < 4.0  # the hang was cut by the 0.5 s timeout, not waited out


def test_gives_up_after_max_retries_with_a_retryable_error(fault):
    fault.script("down", *[503] * 10)
    eng = engine(fault, max_retries=2)
    [c] = eng.complete([req("down")])
    assert len(fault.attempts("down")) == 3
    assert c.error.startswith("http 503: scripted 503") and "gave up after 3 attempts" in c.error
    assert c.retryable and not c.final  # not cached: the next run retries it


def test_connection_refused_is_retried_then_an_error():
    eng = OpenAIEngine(
        "m", f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff_s=0.01, timeout_s=2
    )
    [c] = eng.complete([req("x")])
    assert c.error.startswith("connection error") and c.retryable
    assert eng.stats.attempts == 2


def test_garbage_only_gives_an_error_after_retries(fault):
    fault.script("junk", *["garbage"] * 5)
    [c] = engine(fault, max_retries=1).complete([req("junk")])
    assert "unreadable response body" in c.error and c.retryable
    assert len(fault.attempts("junk")) == 2


@pytest.mark.parametrize(
    "message,expect",
    [
        ("temperature must be non-negative", "http 400: temperature must be non-negative"),
        (
            "This model's maximum context length is 2048 tokens. However, your prompt contains "
            "3001 input tokens, which exceeds this limit even without any output tokens.",
            "prompt_too_long: 3001 prompt tokens >= context 2048",
        ),
        (
            "This model's maximum context length is 8192 tokens. However, your messages resulted "
            "in 9000 tokens. Please reduce the length of the messages.",
            "prompt_too_long: 9000 prompt tokens >= context 8192",
        ),
        (
            "Input length (5000) exceeds model's maximum context length (4096).",
            "prompt_too_long: 5000 prompt tokens >= context 4096",
        ),
    ],
)
def test_400_is_not_retried(fault, message, expect):
    fault.script("bad", (400, {}, message))
    [c] = engine(fault).complete([req("bad")])
    assert len(fault.attempts("bad")) == 1
    assert c.error == expect
    too_long = expect.startswith("prompt_too_long")
    assert c.retryable is not too_long and c.final is too_long  # too long: cached


def test_prompt_fits_but_max_tokens_does_not_clamps_once(fault):
    fault.script(
        "long",
        (
            400,
            {},
            "This model's maximum context length is 2048 tokens. "
            "However, you requested 2100 tokens (2000 in the messages, 100 in "
            "the completion). Please reduce the length.",
        ),
    )
    [c] = engine(fault).complete([req("long", max_tokens=100)])
    assert c.error is None
    assert [a["body"]["max_tokens"] for a in fault.attempts("long")] == [100, 48]


def test_order_and_bounded_concurrency(fault):
    k = 24
    for i in range(k):  # early requests answer last
        fault.script(f"q{i}", ("delay", 0.01 * (k - i)))
    eng = engine(fault, max_concurrency=6)
    out = eng.complete([req(f"q{i}") for i in range(k)])
    assert [c.texts for c in out] == [[f"q{i} #0"] for i in range(k)]
    assert 2 <= fault.max_inflight <= 6


def test_request_fields_and_answer_mapping(fault):
    schema = json.dumps({"type": "object", "properties": {"winner": {"type": "string"}}})
    r = ChatRequest(
        messages=(("system", "s"), ("user", "judge")),
        n=2,
        temperature=0.3,
        top_p=0.9,
        max_tokens=11,
        seed=5,
        stop=("\n\n",),
        json_schema=schema,
        logprobs=3,
    )
    [c] = engine(fault, extra_body={"top_k": 20}).complete([r])
    body = fault.attempts("judge")[0]["body"]
    assert body == {
        "top_k": 20,
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "judge"}],
        "n": 2,
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 11,
        "seed": 5,
        "stop": ["\n\n"],
        "logprobs": True,
        "top_logprobs": 3,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": json.loads(schema)},
        },
    }
    assert c.texts == ["judge #0", "judge #1"]  # sorted by index
    assert c.finish_reasons == ["stop", "length"]
    assert c.n_prompt_tokens == 7
    assert c.n_output_tokens == [10, 11]  # from the logprobs' length, per choice
    assert len(c.top_logprobs[0]) == 8  # the first 8 steps
    assert c.top_logprobs[1][2] == {
        "alt2.0": -1.0,
        "alt2.1": -2.0,
        "alt2.2": -3.0,
        "t2": pytest.approx(-0.2),
    }


def test_output_tokens_split_when_no_per_choice_counts(fault):
    [c] = engine(fault).complete([req("plain", n=3, seed=None)])
    assert "seed" not in fault.attempts("plain")[0]["body"]
    assert c.n_output_tokens == [6, 5, 5]  # usage.completion_tokens = 16 over 3 choices
    assert c.top_logprobs == [None, None, None]


def test_backoff_is_exponential_with_jitter_and_capped():
    eng = OpenAIEngine("m", "http://127.0.0.1:1/v1", backoff_s=1.0, max_backoff_s=5.0)
    for retry, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        vals = [eng._backoff(retry, None) for _ in range(50)]
        assert all(base / 2 <= v <= base for v in vals) and len(set(vals)) > 1
    assert eng._backoff(1, 3.0) == 3.0 and eng._backoff(1, 99.0) == 5.0
    assert parse_retry_after(
        {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412480 - 10
    ) == pytest.approx(10)


def test_complete_from_inside_a_running_event_loop(fault):
    eng = engine(fault)

    async def caller():
        return eng.complete([req("inside")])

    [c] = asyncio.run(caller())
    assert c.texts == ["inside #0"]


def test_max_context_from_models_endpoint(fault):
    assert engine(fault).max_context() == 1234
    assert engine(fault).count_prompt_tokens(req("x")) is None


def test_run_cached_makes_no_call_the_second_time(fault, tmp_path):
    fault.script("flaky", 500, *[503] * 10)
    eng = engine(fault, max_retries=1)
    cache = RequestCache(tmp_path / "c.sqlite")
    rs = [req("a", n=2), req("b"), req("flaky")]
    out, stats = run_cached(
        rs, engine_kind="openai", model="m", get_engine=lambda: eng, cache=cache
    )
    assert (stats.made, stats.failed) == (3, 1) and out[2].error
    before = len(fault.seen)
    fault.scripts.clear()
    again, stats2 = run_cached(
        rs, engine_kind="openai", model="m", get_engine=lambda: eng, cache=cache
    )
    assert (stats2.reused, stats2.made) == (2, 1)  # only the failed request is asked again
    assert [s["marker"] for s in fault.seen[before:]] == ["flaky"]
    assert again[:2] == out[:2] and again[2].error is None
    cache.close()


def test_api_key_is_sent_and_never_leaks(fault, monkeypatch, caplog):
    secret = f"sk-planted-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, secret)
    fault.require_auth = secret
    caplog.set_level(logging.DEBUG)
    # a server that echoes the key in its error messages
    fault.script("echo500", *[(500, {}, f"upstream refused key {secret}")] * 3)
    fault.script("echo400", (400, {}, f"bad request for key {secret}"))
    eng = engine(fault, api_key_env=KEY_ENV, max_retries=1)
    out = eng.complete([req("ok"), req("echo500"), req("echo400")])
    assert out[0].error is None
    assert {s["auth"] for s in fault.seen} == {f"Bearer {secret}"}
    assert "***" in out[1].error and "***" in out[2].error
    # a wrong key: the server's 401 echoes what it was given
    monkeypatch.setenv(KEY_ENV, "sk-wrong-" + secret)
    [bad] = eng.complete([req("ok")])
    assert bad.error.startswith("http 401") and len(fault.attempts("ok")) == 2  # no retry
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(EngineError) as info:
        eng.complete([req("ok")])
    assert KEY_ENV in str(info.value)
    texts = [c.to_json() for c in out + [bad]] + [
        str(info.value),
        repr(eng),
        str(vars(eng)),
        caplog.text,
    ]
    texts += [r.getMessage() for r in caplog.records]
    assert caplog.records  # retries and the give-up were logged
    assert not [t for t in texts if secret in t]


# --------------------------------------------------------------------------- vllm serve

SERVED = "smollm2"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """One ``vllm serve`` for the module: SmolLM2 on CPU, killed (process group) at the end."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    from pipeline.engines.embedded import default_cache_dir, ensure_smollm2

    model_dir = ensure_smollm2()
    cache = default_cache_dir()
    port = free_port()
    logf = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    key = f"sk-serve-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_API_KEY": key,
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--seed",
        "0",
        "--structured-outputs-config",
        json.dumps({"backend": "guidance", "disable_any_whitespace": True}),
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
    ]
    t0 = time.monotonic()
    with open(logf, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = t0 + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vllm serve exited with {proc.returncode}:\n"
                    f"{logf.read_text(errors='replace')[-3000:]}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    "vllm serve not healthy after 240 s:\n"
                    f"{logf.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(1)
        print(f"\nvllm serve healthy after {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield {"url": f"http://127.0.0.1:{port}/v1", "key": key}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def served(vllm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, vllm_server["key"])
    return OpenAIEngine(
        SERVED,
        vllm_server["url"],
        api_key_env=KEY_ENV,
        max_concurrency=4,
        timeout_s=120,
        max_retries=2,
    )


@pytest.mark.engine
def test_serve_samples_distinct_and_seeds_reproduce(served):
    r = ChatRequest(
        messages=(("user", "Name a colour and say why you like it."),),
        n=2,
        temperature=1.0,
        top_p=1.0,
        max_tokens=24,
        seed=7,
    )
    first, second, other = served.complete([r, r, ChatRequest(**{**r.__dict__, "seed": 8})])
    assert first.error is None and len(first.texts) == 2
    assert first.texts[0] != first.texts[1]  # n=2 gives distinct samples
    assert first.texts == second.texts  # the same seed reproduces them
    assert other.texts != first.texts
    assert first.n_prompt_tokens > 0 and sum(first.n_output_tokens) > 0
    assert set(first.finish_reasons) <= {"stop", "length"}


@pytest.mark.engine
def test_serve_structured_verdict_and_logprobs(served):
    from pipeline.annotate.judging import format_pairwise, parse_verdict, prob_first_from_logprobs
    from schemas.config import JudgeSpec

    r = format_pairwise(
        JudgeSpec(), [{"role": "user", "content": "What is 2 + 2?"}], "2 + 2 = 4.", "2 + 2 = 5."
    )
    [c] = served.complete([r])
    assert c.error is None
    verdict, err = parse_verdict(c.texts[0])
    assert err is None and verdict in ("A", "B", "tie"), c.texts[0]
    json.loads(c.texts[0])  # the schema held: plain JSON
    p = prob_first_from_logprobs(c.top_logprobs[0])
    assert p is not None and 0.0 <= p <= 1.0
    assert c.n_output_tokens[0] == len(c.top_logprobs[0]) or c.n_output_tokens[0] > 8


@pytest.mark.engine
def test_serve_run_cached_twice_makes_no_call_the_second_time(served, tmp_path):
    cache = RequestCache(tmp_path / "requests.sqlite")
    rs = [
        req("Say hello in French.", n=2, temperature=0.8, max_tokens=16),
        req("Say hello in Spanish.", n=2, temperature=0.8, max_tokens=16),
    ]
    out, stats = run_cached(
        rs, engine_kind="openai", model=SERVED, get_engine=lambda: served, cache=cache
    )
    assert (stats.made, stats.failed) == (2, 0)
    attempts = served.stats.attempts

    def no_engine():
        raise AssertionError("the engine must not be asked when everything is cached")

    again, stats2 = run_cached(
        rs, engine_kind="openai", model=SERVED, get_engine=no_engine, cache=cache
    )
    assert (stats2.made, stats2.reused) == (0, 2)
    assert served.stats.attempts == attempts
    assert [c.texts for c in again] == [c.texts for c in out]
    cache.close()


@pytest.mark.engine
def test_serve_context_limit_and_auth(served, vllm_server, monkeypatch):
    assert served.max_context() == 2048
    [c] = served.complete([req("word " * 3000, max_tokens=16)])
    assert c.error.startswith("prompt_too_long") and not c.retryable, c.error
    monkeypatch.setenv("PREFCURATE_TEST_WRONG_KEY", "sk-wrong")
    wrong = OpenAIEngine(SERVED, vllm_server["url"], api_key_env="PREFCURATE_TEST_WRONG_KEY")
    [c] = wrong.complete([req("hi", max_tokens=4)])
    assert c.error.startswith("http 401") and wrong.stats.attempts == 1
