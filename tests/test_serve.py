"""leantune serve against real clients on loopback: the official `openai` client and langchain-openai talk to a
real uvicorn server holding the tiny model and several adapters. Answers are compared with each adapter's own
greedy answer computed outside the server (no cross-talk in mixed batches), hot load/unload and registry
promote/rollback happen while it runs. Every load test is bounded in count and time."""

import concurrent.futures
import json
import threading
import time

import httpx
import openai
import pytest
import torch
from conftest import chat_row, tiny_overrides
from typer.testing import CliRunner

from leantune.cli import app
from leantune.data.tokenize import end_of_turn_ids
from leantune.models.inference import load_trained
from leantune.runs.rundir import open_run_dir
from leantune.serve.api import build, running
from leantune.training.api import train

REPLIES = {"spam": ("spam", "ham"), "yesno": ("yes indeed", "no way"), "greek": ("alpha beta", "gamma")}
PROMPTS = [f"Is message {i} spam?" for i in (3, 4, 7, 9)]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    made = {}
    for name, (a, b) in REPLIES.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(chat_row(f"Is message {i} spam?", a if i % 3 == 0 else b)) + "\n"
                                for i in range(48)))
        extra = {"output.name": name, "training.max_steps": 16}
        result = train(None, tiny_overrides(tiny_model_dir, data, root / "runs", **extra))
        made[name] = open_run_dir(result.run_dir)
    result = train(None, tiny_overrides(tiny_model_dir, root / "spam.jsonl", root / "runs",
                                        **{"output.name": "dora", "method.name": "dora", "training.max_steps": 16}))
    made["dora"] = open_run_dir(result.run_dir)
    return made


def _solo_answer(model, tokenizer, prompt: str, max_tokens: int = MAX_TOKENS) -> str:
    """The greedy answer of one model alone, by transformers' own generate (not the server's decoder)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    eot = sorted(end_of_turn_ids(tokenizer))
    with torch.no_grad():
        out = model.eval().generate(**ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eot,
                                    pad_token_id=eot[0])
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def solo(runs, tiny_model_dir):
    from leantune.models.loading import load_base

    answers = {}
    for name in ("spam", "yesno", "greek", "dora"):
        trained = load_trained(runs[name], "cpu")
        answers[name] = {p: _solo_answer(trained.model, trained.tokenizer, p) for p in PROMPTS}
    base = load_base(str(tiny_model_dir), "float32", "cpu")
    answers["base"] = {p: _solo_answer(base.model, base.tokenizer, p) for p in PROMPTS}
    assert len({tuple(a.values()) for a in answers.values()}) >= 4, "the adapters must answer differently"
    return answers


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("requests")
    built = build([f"spam={runs['spam'].path}", f"yesno={runs['yesno'].path}", f"greek={runs['greek'].path}",
                   f"dora={runs['dora'].path}"], runs_dir=str(runs["spam"].path.parent), max_loaded=8, max_batch=16,
                  max_queue=256, log_requests=str(log_dir), say=lambda _: None)
    with running(built) as url:
        yield url, built, log_dir


def _client(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60, **kw)


def _chat(client, model, prompt, **kw):
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           **{"temperature": 0, "max_tokens": MAX_TOKENS, **kw})
    return reply


def test_models_chat_and_completion(server, solo, tiny_model_dir):
    url, built, _ = server
    client = _client(url)
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == built.names.base_name and {"spam", "yesno", "greek", "dora"} <= set(ids)
    listed = {m.id: m for m in client.models.list().data}
    assert listed["spam"].model_extra["parent"] == built.names.base_name
    reply = _chat(client, "spam", PROMPTS[0])
    assert reply.choices[0].message.content == solo["spam"][PROMPTS[0]]
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    base = _chat(client, built.names.base_name, PROMPTS[1])
    assert base.choices[0].message.content == solo["base"][PROMPTS[1]]
    completion = client.completions.create(model="spam", prompt="Is message 3", max_tokens=4, temperature=0)
    assert completion.object == "text_completion" and completion.usage.completion_tokens <= 4
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_streaming_wire_format(server, solo):
    url, _, _ = server
    body = {"model": "yesno", "messages": [{"role": "user", "content": PROMPTS[0]}], "temperature": 0,
            "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True},
            "some_field_an_sdk_sends": {"x": 1}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    choice_chunks = [c for c in chunks if c["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in choice_chunks][-1] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in choice_chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in choice_chunks)
    assert text == solo["yesno"][PROMPTS[0]]
    # the official client reads the same stream
    stream = _client(url).chat.completions.create(model="yesno", messages=[{"role": "user", "content": PROMPTS[0]}],
                                                  temperature=0, max_tokens=MAX_TOKENS, stream=True,
                                                  stream_options={"include_usage": True})
    parts, usage = [], None
    for event in stream:
        if event.choices:
            parts.append(event.choices[0].delta.content or "")
        usage = event.usage or usage
    assert "".join(parts) == solo["yesno"][PROMPTS[0]] and usage.completion_tokens >= 1


def test_stop_strings_never_leak(server, solo):
    url, _, _ = server
    client = _client(url)
    full = solo["greek"][PROMPTS[0]]
    assert len(full) >= 4, full
    for stop in (full[1:3], full[2:], full[-2:]):  # spans of the answer, some certainly across token boundaries
        expected = full[:full.index(stop)]
        reply = _chat(client, "greek", PROMPTS[0], stop=[stop, "\u2603never"])
        assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(model="greek", messages=[{"role": "user", "content": PROMPTS[0]}],
                                                  temperature=0, max_tokens=MAX_TOKENS, stop=stop, stream=True)
        assert "".join(e.choices[0].delta.content or "" for e in streamed if e.choices) == expected


def test_errors_are_openai_shaped(server):
    url, built, _ = server
    client = _client(url)
    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, "no-such-adapter", "hi")
    assert e.value.body["code"] == "model_not_found" and "no-such-adapter" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, "spam", "hi", temperature=3)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, "spam", "hi", stop=["a", "b", "c", "d", "e"])
    assert e.value.body["param"] == "stop"
    with pytest.raises(openai.APIStatusError) as e:
        _chat(client, "spam", "spam " * (built.engine.context + 1))
    assert e.value.status_code == 413 and e.value.body["code"] == "context_length_exceeded"


def test_hot_load_request_unload(server, runs, solo):
    url, _, _ = server
    client = _client(url)
    loaded = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "hot", "lora_path": str(runs["greek"].path)})
    assert loaded.status_code == 200, loaded.text
    assert _chat(client, "hot", PROMPTS[1]).choices[0].message.content == solo["greek"][PROMPTS[1]]
    again = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "hot", "lora_path": str(runs["spam"].path)})
    assert again.status_code == 400 and "already served" in again.json()["error"]["message"]
    bad = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/no/such/run"})
    assert bad.status_code == 404
    assert httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "hot"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        _chat(client, "hot", PROMPTS[1])
    assert httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "hot"}).status_code == 404


def test_mixed_batches_answer_as_each_adapter_alone(server, solo):
    """32 concurrent clients over 3 adapters + DoRA + the base, bounded in count and time: no errors, and every
    answer equals that model's solo answer."""
    url, built, _ = server
    client = _client(url)
    models = ["spam", "yesno", "greek", "dora", built.names.base_name]
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(96)]
    batches_before = built.engine.batches
    deadline = time.monotonic() + 120

    def ask(job):
        model, prompt = job
        assert time.monotonic() < deadline, "the load test ran out of time"
        return job, _chat(client, model, prompt).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, jobs, timeout=180))
    for (model, prompt), answer in answers:
        key = "base" if model == built.names.base_name else model
        assert answer == solo[key][prompt], (model, prompt)
    assert built.engine.batches - batches_before < len(jobs)  # requests really shared forward passes


def test_promote_and_rollback_while_serving(server, runs, solo):
    url, _, _ = server
    runs_dir = str(runs["spam"].path.parent)
    cli = CliRunner()
    for name in ("spam", "yesno"):  # v1 answers like spam, v2 like yesno
        assert cli.invoke(app, ["registry", "push", str(runs[name].path), "--name", "bot", "--runs-dir", runs_dir]).exit_code == 0
    assert cli.invoke(app, ["registry", "promote", "bot", "1", "--stage", "production", "--runs-dir", runs_dir]).exit_code == 0
    assert httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "prod", "lora_path": "bot@production"}).status_code == 200
    client = _client(url)
    v1, v2 = solo["spam"], solo["yesno"]
    stop = threading.Event()
    seen, errors = [], []

    def hammer():
        while not stop.is_set():
            try:
                prompt = PROMPTS[len(seen) % len(PROMPTS)]
                seen.append((prompt, _chat(client, "prod", prompt).choices[0].message.content))
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        assert cli.invoke(app, ["registry", "promote", "bot", "2", "--stage", "production", "--runs-dir", runs_dir]).exit_code == 0
        time.sleep(0.5)
        after_promote = _chat(client, "prod", PROMPTS[0]).choices[0].message.content
        assert cli.invoke(app, ["registry", "rollback", "bot", "--runs-dir", runs_dir]).exit_code == 0
        after_rollback = _chat(client, "prod", PROMPTS[0]).choices[0].message.content
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert after_promote == v2[PROMPTS[0]] and after_rollback == v1[PROMPTS[0]]
    # every answer in flight was one version's whole answer, never a mix
    assert all(answer in (v1[p], v2[p]) for p, answer in seen) and len(seen) >= 4
    # a registry name:vN works as a model name directly
    assert _chat(client, "bot:v2", PROMPTS[2]).choices[0].message.content == v2[PROMPTS[2]]


def test_langchain_streams_with_usage(server, solo):
    from langchain_openai import ChatOpenAI

    url, _, _ = server
    llm = ChatOpenAI(model="greek", base_url=url + "/v1", api_key="unused", temperature=0, max_tokens=MAX_TOKENS,
                     stream_usage=True, max_retries=0)
    total = None
    for piece in llm.stream(PROMPTS[2]):
        total = piece if total is None else total + piece
    assert total.content == solo["greek"][PROMPTS[2]]
    assert total.usage_metadata["output_tokens"] >= 1
    assert llm.invoke(PROMPTS[3]).content == solo["greek"][PROMPTS[3]]


def test_request_log_and_metrics(server):
    url, _, log_dir = server
    _chat(_client(url), "spam", PROMPTS[3])
    rows = [json.loads(line) for line in (log_dir / "spam.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["prompt"] == [{"role": "user", "content": PROMPTS[3]}] and last["run_id"]
    assert {"answer", "prompt_tokens", "completion_tokens", "latency_s", "adapter", "key", "version"} <= set(last)
    metrics = httpx.get(url + "/metrics").text
    assert 'leantune_requests_total{model="spam",status="ok"}' in metrics
    assert "leantune_request_latency_seconds_bucket" in metrics and "leantune_queue_depth" in metrics
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_a_client_that_goes_away_frees_its_row(server):
    url, built, _ = server
    body = {"model": "spam", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 200,
            "temperature": 1.0, "seed": 1, "stream": True}
    stop_on = threading.Event()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        for _line in r.iter_lines():
            stop_on.set()
            break  # leave after the first chunk: the connection closes
    deadline = time.monotonic() + 30
    while built.engine.running or built.engine.queue_depth():
        assert time.monotonic() < deadline, "the abandoned request kept its slot"
        time.sleep(0.05)
    assert stop_on.is_set()


def test_full_queue_answers_429_and_api_key_is_checked(runs):
    built = build([f"spam={runs['spam'].path}"], runs_dir=str(runs["spam"].path.parent), max_queue=1, max_batch=1,
                  api_key="sekrit", say=lambda _: None)
    with running(built) as url:
        with pytest.raises(openai.AuthenticationError):
            _chat(_client(url), "spam", "hi")
        client = openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0, timeout=60)
        gate = threading.Event()
        original = built.engine._decode

        def slow_decode(batch):  # hold the one slot until the test has filled the queue
            gate.wait(timeout=30)
            original(batch)

        built.engine._decode = slow_decode
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_chat, client, "spam", "one")
            deadline = time.monotonic() + 10
            while not built.engine.running:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            second = pool.submit(_chat, client, "spam", "two")  # waits in the queue (size 1)
            while not built.engine.queue_depth():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError):
                _chat(client, "spam", "three")
            gate.set()
            assert first.result(timeout=60).choices and second.result(timeout=60).choices


def test_serve_refusals(runs, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from test_cli import assert_user_error, run_cli

    code, _, err = run_cli(monkeypatch, capsys, "serve", "--adapter", "x=/no/such/run", "--runs-dir", str(tmp_path))
    assert_user_error(code, err, "does not exist")
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--base", "smollm2-135m", "--adapter",
                           f"spam={runs['spam'].path}")
    assert_user_error(code, err, "this server's base is smollm2-135m")
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--adapter", f"{tiny_model_dir.name}={runs['spam'].path}")
    assert_user_error(code, err, "is the base model's name; give the adapter another name")
    full = train(None, tiny_overrides(tiny_model_dir, runs["spam"].config().data.train, tmp_path / "runs", **{"method.name": "full", "training.max_steps": 2}))
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--base", str(tiny_model_dir), "--adapter",
                           f"full={full.run_dir}")
    assert_user_error(code, err, "is a full fine-tune, not an adapter")


def test_serve_without_its_extra_says_how_to_install(monkeypatch, capsys):
    import importlib.util

    from test_cli import assert_user_error, run_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--adapter", "x=y")
    assert_user_error(code, err, "pip install -c constraints.txt 'leantune[serve]'")


def test_an_int4_base_serves_adapters_beside_it(runs, solo):
    """--quantize int4: the export's int4 format under the adapters; answers are close to, not equal to, the float
    model's (bf16 activations), and a mixed batch still routes each row to its own adapter."""
    built = build([f"spam={runs['spam'].path}", f"yesno={runs['yesno'].path}"], runs_dir=str(runs["spam"].path.parent),
                  quantize="int4", say=lambda _: None)
    layer = built.engine.base.model.layers[0].mlp.up_proj
    assert type(layer.weight).__name__ == "Int4OpaqueTensor"
    with running(built) as url:
        client = _client(url)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda m: _chat(client, m, PROMPTS[0]).choices[0].message.content,
                                    ["spam", "yesno"] * 4))
    assert len(set(answers[0::2])) == 1 and len(set(answers[1::2])) == 1  # the same adapter answers alike
    assert answers[0] != answers[1]  # and each row got its own adapter
    with pytest.raises(Exception, match="only int4 is offered"):
        build([f"spam={runs['spam'].path}"], runs_dir=str(runs["spam"].path.parent), quantize="int8",
              say=lambda _: None)


def test_text_stream_holds_back_what_could_become_a_stop_string(tiny_model_dir):
    from transformers import AutoTokenizer

    from leantune.serve.text_stream import TextStream

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("the quick brown fox jumps", add_special_tokens=False)["input_ids"]
    full = tokenizer.decode(ids)
    for stop in ("brown f", "k b", "jumps", "zzz"):
        stream = TextStream(tokenizer, (stop, "never-seen"))
        sent = "".join(stream.push(i) for i in ids) + stream.finish()
        assert sent == (full[:full.index(stop)] if stop in full else full), stop
        assert stream.stopped == (stop in full)
    # a multi-byte character split across byte tokens is never sent half-made
    snowman = tokenizer("\u2603", add_special_tokens=False)["input_ids"]
    assert len(snowman) > 1  # three byte tokens in this small vocabulary
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in snowman] + [stream.finish()]
    assert "".join(pieces) == "\u2603" and all("\ufffd" not in p for p in pieces)


def test_request_log_rotates(tmp_path):
    from leantune.serve.observe import RequestLog

    log = RequestLog(tmp_path, max_bytes=400, backups=2)
    for i in range(20):
        log.write("support-bot@production", {"prompt": "x" * 50, "answer": str(i)})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["support-bot_production.jsonl", "support-bot_production.jsonl.1", "support-bot_production.jsonl.2"]
    last = [json.loads(line) for line in (tmp_path / files[0]).read_text().splitlines()]
    assert last[-1]["answer"] == "19" and last[-1]["model"] == "support-bot@production"


def test_stacked_lora_computes_what_peft_mixed_batches_compute(runs, tiny_model_dir):
    from peft import PeftModel

    from leantune.models.loading import load_base
    from leantune.serve.stacked_lora import StackedLoRA

    base = load_base(str(tiny_model_dir), "float32", "cpu").model
    model = PeftModel.from_pretrained(base, runs["spam"].adapter, adapter_name="spam").eval()
    for name in ("yesno", "greek"):
        model.load_adapter(runs[name].adapter, adapter_name=name)
    names = ["greek", "__base__", "spam", "yesno", "spam"]
    ids = torch.randint(5, 300, (len(names), 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids, adapter_names=names).logits
        stacked = StackedLoRA(model)
        stacked.rebuild(["spam", "yesno", "greek"])
        with stacked.batch(names, "cpu"):
            got = model(ids).logits
        model.set_adapter("yesno")  # PEFT's own path still works on the re-pointed weights
        alone = model(ids[3:4]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, expected[3:4], atol=1e-5, rtol=1e-5)
    layer = next(m for m in model.modules() if hasattr(m, "_stack_a"))
    storage = layer._stack_a.untyped_storage().data_ptr()
    assert layer.lora_A["greek"].weight.untyped_storage().data_ptr() == storage  # no second copy of an adapter
