"""`leantune ui`, tested as a user meets it: the real command serving on 127.0.0.1 over a runs root made by real tiny
training runs, read by Debian's Chromium driven through Playwright (never a downloaded browser). Screenshots go to
test-artifacts/ui/ (or $LEANTUNE_TEST_ARTIFACTS/ui). Chromium comes from `make browser` (apt); where it is missing
these tests fail, they never skip."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import tiny_overrides, write_spam_chat
from leantune.runs.index import RunIndex
from leantune.runs.jsonl import read_jsonl
from leantune.runs.ledger import row_for, run_dirs
from leantune.runs.registry import push, versions

CHROMIUM = os.environ.get("LEANTUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# what a headless Chromium needs on a machine with no network and no user namespace for its sandbox (root in CI)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "test-token-1234"
ARTIFACTS = Path(os.environ.get("LEANTUNE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts")) / "ui"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(runs: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "leantune", "ui", "--runs-dir", str(runs), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"leantune ui exited {proc.returncode}: {proc.stdout.read()}")
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("leantune ui did not answer within 30 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def http(url: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def runs_root(tiny_model_dir, tmp_path_factory):
    """Two finished tiny runs that differ in learning rate (one evaluated), both registered as 'bot', a budget."""
    from leantune import train
    from leantune.runs.ledger import set_project_budget

    root = tmp_path_factory.mktemp("ui")
    data = write_spam_chat(root / "chat.jsonl")
    runs = root / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEANTUNE_HOME", os.environ.get("LEANTUNE_TEST_HOME", str(root / "home")))
        common = {"training.max_steps": 8, "training.eval_every": 4, "training.checkpoint_every": 100, "cost.usd_per_hour": 2.0}
        first = train(None, tiny_overrides(tiny_model_dir, data, runs, **common, **{"eval.after_train": True}))
        second = train(None, tiny_overrides(tiny_model_dir, data, runs, **common, **{"training.lr": 1e-3}))
    index = RunIndex(runs)
    for run in (first, second):
        push(index, index.find(run.run_dir.name), "bot")
    set_project_budget(index, "default", "0.5")
    return runs, first.run_dir.name, second.run_dir.name


@pytest.fixture(scope="module")
def server(runs_root):
    proc, url = start_ui(runs_root[0], "--allow-write", "--token", TOKEN)
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"No Chromium at {CHROMIUM}: `make browser` installs Debian's (apt install chromium); the dashboard's "
                    "tests need a real browser and do not skip without one.")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    # a page that answers 4xx on purpose (an error page under test) is fine; a script, stylesheet or poll that fails is not
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 and r.request.resource_type != "document" else None)
    yield page
    context.close()
    assert errors == [], errors


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def steps_of(runs: Path, run_id: str) -> tuple[int, int]:
    metrics = read_jsonl(runs / run_id / "metrics.jsonl")
    return sum("loss" in m for m in metrics), sum("eval_loss" in m for m in metrics)


# ---------------------------------------------------------------------------------------------------- in a browser
def test_runs_page_lists_sorts_and_filters(server, runs_root, page):
    runs, a, b = runs_root
    page.goto(server + "/")
    ids = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert sorted(ids) == sorted([a, b])
    cells = page.locator(f'tr[data-id="{a}"] td')
    assert "%" in cells.nth(8).inner_text() and "(base " in cells.nth(8).inner_text()  # the evaluated run's task score
    assert cells.nth(9).inner_text().startswith(("+", "-"))  # its forgetting, in points
    assert page.locator(f'tr[data-id="{b}"] td').nth(8).inner_text() == ""  # not evaluated: no score, not a zero
    shot(page, "runs")
    # a column only one run has a value in: that run first whichever way it sorts
    for _ in range(2):
        page.locator("#runs thead th").nth(8).locator("a").click()
        assert page.locator("#runs tbody tr").first.get_attribute("data-id") == a
    # sort by dollars, both ways: the order follows the index's costs
    costs = {r["id"]: r["cost_usd"] for r in RunIndex(runs).runs()}
    page.locator("#runs thead th").nth(11).locator("a").click()
    first = page.locator("#runs tbody tr").first.get_attribute("data-id")
    assert first == max(costs, key=costs.get)
    page.locator("#runs thead th").nth(11).locator("a").click()
    assert page.locator("#runs tbody tr").first.get_attribute("data-id") == min(costs, key=costs.get)
    # filter by text, then by a status no run has
    # two runs started in the same second are X and X-2: the longer id names one run only
    one = max((a, b), key=len)
    page.fill('input[name="q"]', one)
    page.click("text=Filter")
    assert page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)") == [one]
    page.goto(server + "/?status=failed")
    assert "No runs match the filter" in page.inner_text("#runs")


def test_run_page_draws_a_point_per_step_and_its_evaluation(server, runs_root, page):
    runs, a, _ = runs_root
    page.goto(f"{server}/runs/{a}")
    trained, evaluated = steps_of(runs, a)
    assert trained == 8 and evaluated >= 2
    assert page.evaluate("leantune.points('loss', 1)") == trained  # as many points as metrics.jsonl has steps
    assert page.evaluate("leantune.points('loss', 2)") == evaluated
    for chart in ("lr", "tokens_per_s", "cost_usd"):
        assert page.evaluate(f"leantune.points('{chart}', 1)") == trained
    assert page.evaluate("leantune.charts.loss.scales.y.distr") == 3  # log scale by default
    page.uncheck("#log-scale")
    assert page.evaluate("leantune.charts.loss.scales.y.distr") == 1
    raw = page.evaluate("leantune.charts.loss.data[1]")
    page.fill("#smoothing", "0.9")
    page.dispatch_event("#smoothing", "input")
    smoothed = page.evaluate("leantune.charts.loss.data[1]")
    assert smoothed[0] == raw[0] and smoothed[-1] != raw[-1]
    # plan vs actual, the evaluation with its interval, forgetting, the config as it is on disk
    assert "peak memory" in page.inner_text("#plan-vs-actual")
    assert "held-out" in page.inner_text("#eval") and "[" in page.inner_text("#eval")
    assert "Forgetting on the general suite" in page.inner_text("#forgetting")
    assert page.inner_text("#config").strip() == (runs / a / "config.yaml").read_text().strip()
    shot(page, "run")


def test_compare_overlays_the_selected_runs(server, runs_root, page):
    runs, a, b = runs_root
    page.goto(server + "/")
    page.check(f'input[value="{a}"]')
    page.check(f'input[value="{b}"]')
    page.click("#compare")
    page.wait_for_url("**/compare?*")
    labels = page.evaluate("leantune.charts.compare.series.map(s => s.label)")
    assert sorted(labels[1:]) == sorted([a, f"{a} (eval)", b, f"{b} (eval)"])  # in the runs page's order
    for run in (a, b):
        trained, evaluated = steps_of(runs, run)
        assert page.evaluate(f"leantune.points('compare', {labels.index(run)})") == trained
        assert page.evaluate(f"leantune.points('compare', {labels.index(run + ' (eval)')})") == evaluated
    diff = page.inner_text("#config-diff")
    assert "training.lr" in diff and "0.003" in diff and "0.001" in diff
    shot(page, "compare")


def test_promote_and_rollback_with_confirmation_change_the_registry(server, runs_root, page):
    runs, _, _ = runs_root
    index = RunIndex(runs)
    stage = lambda: {r["version"]: r["stage"] for r in versions(index, "bot")}  # noqa: E731
    page.goto(server + f"/registry?token={TOKEN}")  # the link `leantune ui --allow-write` prints: sets the cookie
    assert "token" not in page.url
    page.click('button[data-action="promote-bot-v1-production"]')
    assert "bot v1 -> production" in page.inner_text("#what")
    assert stage()[1] == "none"  # nothing changes before the confirmation
    page.click("#confirm")
    assert "bot v1 -> production" in page.inner_text("#flash")
    assert stage() == {1: "production", 2: "none"}
    page.click('button[data-action="promote-bot-v2-production"]')
    assert "v1 leaves production for archived" in page.inner_text("#what")
    page.click("#confirm")
    assert stage() == {1: "archived", 2: "production"}
    page.click('button[data-action="rollback-bot"]')
    page.click("#confirm")
    assert stage() == {1: "production", 2: "archived"}
    shot(page, "registry")
    log = (runs / "ui-actions.log").read_text()
    assert log.count("promote: bot v") == 2 and "rollback: bot: production v2 -> v1" in log


def test_budget_page_and_setting_a_budget(server, runs_root, page):
    runs, _, _ = runs_root
    page.goto(server + f"/budgets?token={TOKEN}")
    row = page.locator('tr[data-project="default"]').inner_text()
    assert "$0.50" in row
    page.fill('#budget-form input[name="usd"]', "0.75")
    page.click("#budget-form button")
    page.click("#confirm")
    assert RunIndex(runs).budget("default")[0] == 0.75
    assert "$0.75" in page.locator('tr[data-project="default"]').inner_text()
    page.fill('#budget-form input[name="usd"]', "-3")
    page.click("#budget-form button")
    page.click("#confirm")
    assert "positive number of dollars" in page.inner_text("#error")
    assert RunIndex(runs).budget("default")[0] == 0.75  # bad input changed nothing


def test_plan_page_draws_the_memory_breakdown_and_matches_the_cli(server, page):
    options = {"model": "smollm2-135m", "gpu": "l4", "tokens": "20M", "seq_len": "1024"}
    page.goto(server + "/plan")
    page.fill('input[name="model"]', options["model"])
    page.select_option('select[name="gpu"]', options["gpu"])
    page.fill('input[name="tokens"]', options["tokens"])
    page.fill('input[name="seq_len"]', options["seq_len"])
    page.click("#plan-submit")
    assert page.locator(".stack .part").count() >= 3
    assert "activations" in page.inner_text("#memory-table")
    shot(page, "plan")
    status, body = http(server + "/api/plan?" + urllib.parse.urlencode(options))
    assert status == 200
    cli = subprocess.run([sys.executable, "-m", "leantune", "plan", "--model", "smollm2-135m", "--gpu", "l4", "--tokens", "20M",
                          "--seq-len", "1024", "--json"], capture_output=True, text=True)
    assert json.loads(body) == json.loads(cli.stdout)
    page.goto(server + "/plan?model=no-such-model")
    assert "Unknown model 'no-such-model'" in page.inner_text("#error")


def test_tables_read_without_javascript(server, runs_root, browser):
    runs, a, b = runs_root
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(server + "/")
    assert page.locator("#runs tbody tr").count() == 2
    page.locator("#runs thead th").nth(1).locator("a").click()  # sorting is a link, not a script
    assert "sort=id" in page.url
    page.goto(f"{server}/compare?run={a}&run={b}")
    assert "training.lr" in page.inner_text("#config-diff")
    context.close()


def test_a_running_run_updates_live(server, runs_root, page):
    """A run in progress, written through the same RunDir calls the trainer makes: the page polls and draws the new
    steps, then stops polling when the status changes."""
    from leantune.runs.rundir import RunDir

    runs, a, _ = runs_root
    live = runs / "20990101-000000-live-run"
    shutil.copytree(runs / a, live, ignore=shutil.ignore_patterns("eval.json", "adapter", "checkpoints"))
    run = RunDir(live)
    kept = [m for m in run.read_metrics() if m.get("step", 0) <= 3 and "loss" in m]
    (live / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in kept))
    run.update_info(id=live.name, status="running")
    try:
        page.goto(f"{server}/runs/{live.name}")
        assert page.evaluate("leantune.points('loss', 1)") == 3 and page.inner_text("#live").startswith("live")
        for step in range(4, 7):
            run.append_metrics({**kept[-1], "step": step, "loss": 1.0 / step})
        page.wait_for_function("leantune.points('loss', 1) === 6", timeout=10_000)
        run.update_info(status="completed")
        page.wait_for_function("document.getElementById('status').textContent === 'completed'", timeout=10_000)
        assert page.inner_text("#live") == "finished: completed"
    finally:
        shutil.rmtree(live)
        RunIndex(runs).reindex(run_dirs(runs), row_for)


# ---------------------------------------------------------------------------------------------------- over HTTP
def test_writes_need_allow_write_and_the_token(server, runs_root):
    runs, _, _ = runs_root
    before = versions(RunIndex(runs), "bot")
    form = {"name": "bot", "version": "2", "stage": "staging", "confirmed": "yes"}
    status, body = http(server + "/registry/promote", form)
    assert status == 403 and "needs the token" in body
    status, body = http(server + "/registry/promote", {**form, "token": "wrong"})
    assert status == 403
    assert versions(RunIndex(runs), "bot") == before
    assert "refused" in (runs / "ui-actions.log").read_text()
    proc, url = start_ui(runs)  # read-only: no token helps
    try:
        status, body = http(url + "/registry/promote", {**form, "token": TOKEN})
        assert status == 403 and "read-only" in body
        page = http(url + "/registry")[1]
        assert "data-action=" not in page and "--allow-write" in page
    finally:
        stop(proc)
    assert versions(RunIndex(runs), "bot") == before


def test_exposed_host_is_said_on_every_page(runs_root):
    """The app as `--host 0.0.0.0` builds it, in-process (tests never listen beyond 127.0.0.1)."""
    from fastapi.testclient import TestClient

    from leantune.ui.app import create_app

    runs, _, _ = runs_root
    exposed = TestClient(create_app(runs, host="0.0.0.0"))
    for path in ("/", "/registry", "/plan", "/budgets", "/drift"):
        assert "Exposed: this dashboard listens on 0.0.0.0" in exposed.get(path).text
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert "Exposed" not in TestClient(create_app(runs, host=host)).get("/").text


def test_ui_refusals_exit_2(runs_root, tmp_path):
    runs, _, _ = runs_root

    def ui(*args):
        return subprocess.run([sys.executable, "-m", "leantune", "ui", *args], capture_output=True, text=True, timeout=60)

    done = ui("--runs-dir", str(tmp_path / "nope"))
    assert done.returncode == 2 and "No runs directory" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = ui("--runs-dir", str(runs), "--port", str(busy.getsockname()[1]))
    assert done.returncode == 2 and "Cannot listen on 127.0.0.1" in done.stderr and "--port" in done.stderr
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "something").write_text("x")
    done = ui("--runs-dir", str(stray))
    assert done.returncode == 2 and "runs reindex" in done.stderr


def test_unknown_run_and_bad_compare_are_clear_pages(server):
    status, body = http(server + "/runs/no-such-run")
    assert status == 404 and "No run &#39;no-such-run&#39;" in body
    status, body = http(server + "/compare?run=only-one")
    assert status == 400 and "at least two runs" in body
    status, body = http(server + "/api/runs/no-such-run")
    assert status == 404 and "no-such-run" in json.loads(body)["error"]


def test_the_runs_page_answers_for_1000_runs(runs_root, tmp_path):
    """The page the issue sizes: 1,000 runs in the index, rendered by the real server; the bound here is loose (a
    shared CI machine), the number that counts is bench/ui_runs_page.py's (README)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from ui_runs_page import make_runs_root

    runs, a, _ = runs_root
    many = make_runs_root(runs / a, tmp_path / "many", 1000)
    assert len(RunIndex(many).runs()) == 1000
    proc, url = start_ui(many)
    try:
        http(url + "/")  # the first request fills the eval.json cache
        times = []
        for _ in range(5):
            started = time.perf_counter()
            status, body = http(url + "/?sort=cost_usd")
            times.append(time.perf_counter() - started)
            assert status == 200 and body.count("<tr data-id=") == 1000
        assert sorted(times)[2] < 1.5, times
    finally:
        stop(proc)


def test_the_dashboard_imports_no_torch(runs_root):
    """Like the other verbs that touch no model: building the app and rendering its pages loads neither torch nor
    transformers (the server starts in well under a second)."""
    runs, a, b = runs_root
    code = (f"import sys\nfrom fastapi.testclient import TestClient\nfrom leantune.cli import main\nfrom leantune.ui.app import create_app\n"
            f"client = TestClient(create_app({str(runs)!r}))\n"
            f"codes = [client.get(p).status_code for p in ('/', '/runs/{a}', '/compare?run={a}&run={b}', '/budgets', "
            f"'/registry', '/drift', '/plan?model=smollm2-135m&tokens=1M', '/api/runs')]\n"
            "print('RESULT', codes, [m for m in ('torch', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RESULT [200, 200, 200, 200, 200, 200, 200, 200] []" in done.stdout, done.stdout + done.stderr


def test_a_new_evaluation_and_a_changed_config_show_at_once(runs_root, tmp_path):
    """No stale views: eval.json summaries are cached by modification time, configs are read on every request."""
    from leantune.ui import pages

    runs, a, _ = runs_root
    index, cache = RunIndex(runs), pages.EvalCache()
    row = lambda: next(r for r in pages.runs_page(index, cache)["rows"] if r["id"] == a)  # noqa: E731
    before = row()["task_score"]
    path = runs / a / "eval.json"
    original = path.read_text()
    try:
        data = json.loads(original)
        data["task_score"]["tuned"] = 0.999
        path.write_text(json.dumps(data))
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 1_000_000))  # a new mtime even on a coarse clock
        assert row()["task_score"] == 0.999 != before
        path.write_text("{ half-written")
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 1_000_000))
        assert row()["task_score"] is None  # unreadable: a dash on the page, the file left alone
        assert path.read_text() == "{ half-written"
    finally:
        path.write_text(original)
    config = runs / a / "config.yaml"
    text = config.read_text()
    try:
        config.write_text(text.replace("max_seq_len: 64", "max_seq_len: 65"))
        assert "max_seq_len: 65" in pages.run_page(index.find(a))["config_text"]
    finally:
        config.write_text(text)


def test_bad_form_and_plan_input_is_a_clear_refusal_that_changes_nothing(runs_root):
    """What a hand-edited form or URL can send: each answered 400 with what is wrong, the registry and budgets as they were."""
    from fastapi.testclient import TestClient

    from leantune.ui.app import create_app

    runs, _, _ = runs_root
    client = TestClient(create_app(runs, allow_write=True, token=TOKEN))
    before = (versions(RunIndex(runs), "bot"), RunIndex(runs).budget("default"))
    for path, form, message in [
        ("/registry/promote", {"name": "bot", "version": "two", "stage": "staging"}, "Version &#39;two&#39; is not a number"),
        ("/registry/promote", {"name": "bot", "version": "9", "stage": "staging"}, "bot has no version 9"),
        ("/registry/promote", {"name": "bot", "version": "1", "stage": "live"}, "Stage &#39;live&#39; is not one of"),
        ("/budgets/set", {"project": "", "usd": "5", "confirmed": "yes"}, "Say which project the budget is for"),
    ]:
        answer = client.post(path, data={**form, "token": TOKEN})
        assert answer.status_code == 400 and message in answer.text, (path, form, answer.text[-500:])
    assert (versions(RunIndex(runs), "bot"), RunIndex(runs).budget("default")) == before
    answer = client.get("/api/plan", params={"model": "smollm2-135m", "batch": "lots"})
    assert answer.status_code == 400 and "batch='lots' is not a number" in answer.json()["error"]
    answer = client.get("/api/plan")
    assert answer.status_code == 400 and "Say which model" in answer.json()["error"]
