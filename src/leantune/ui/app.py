"""`leantune ui`: the FastAPI app. Each route reads through pages.py (which reads through the same library functions
as the CLI) and renders a Jinja2 template, or returns the same data as JSON under /api. Tables are plain HTML
(sorting and filtering are links and GET forms), so they read without JavaScript; the charts are uPlot, vendored
under static/vendor (no CDN: the machine may be offline)."""

from __future__ import annotations

import ipaddress
import json
import math
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..errors import RunDirError, UserError
from ..plan import load_catalog, plan_from_options
from ..plan.presets import PRESETS
from ..runs.cost import usd
from ..runs.index import RunIndex
from ..runs.jsonl import read_jsonl
from . import actions, pages

HERE = Path(__file__).parent
TOKEN_COOKIE = "leantune_ui_token"
PLAN_FIELDS = ("model", "method", "gpu", "gpus", "seq_len", "batch", "tokens", "epochs", "rank", "optimizer", "sharding",
               "budget", "spot", "grad_checkpointing")


def _num(v, fmt: str = "{:.4f}") -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _when(ts) -> str:
    return "" if not ts else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def create_app(runs_dir: str | Path, allow_write: bool = False, token: str | None = None, host: str = "127.0.0.1") -> FastAPI:
    index = RunIndex(runs_dir)
    evals = pages.EvalCache()
    policy = actions.WritePolicy(allow_write, token)
    exposed = not is_loopback(host)
    catalog = load_catalog(None)
    app = FastAPI(title="leantune ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(money=usd, num=_num, when=_when)  # dollars as the CLI prints them

    def render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        base = {"runs_dir": str(index.root), "exposed": exposed, "host": host, "allow_write": allow_write,
                "has_token": bool(_token_of(request)), "flash": request.query_params.get("done")}
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    def _token_of(request: Request, form: dict | None = None) -> str | None:
        return (form or {}).get("token") or request.headers.get("x-leantune-token") or request.cookies.get(TOKEN_COOKIE)

    @app.middleware("http")
    async def take_token(request: Request, call_next):
        """A link with ?token= (printed by `leantune ui --allow-write`) sets a same-site cookie and is redirected
        to the same page without the token, so it stays out of the address bar and history."""
        given = request.query_params.get("token")
        if given is not None and request.method == "GET":
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response = RedirectResponse(request.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
            return response
        return await call_next(request)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        status = 403 if isinstance(exc, actions.NotAllowed) else 404 if isinstance(exc, RunDirError) else 400
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=status)
        return render(request, "error.html", status=status, message=str(exc))

    # ------------------------------------------------------------------ reading
    @app.get("/", response_class=HTMLResponse)
    def runs(request: Request, q: str = "", status: str = "", method: str = "", project: str = "", sort: str = "started",
             order: str = "desc"):
        data = pages.runs_page(index, evals, q, status, method, project, sort, order != "asc")
        params = {"q": q, "status": status, "method": method, "project": project}
        return render(request, "runs.html", page=data, sort_link=lambda key: "?" + urlencode(
            {**{k: v for k, v in params.items() if v}, "sort": key,
             "order": "asc" if key == data["sort"] and data["descending"] else "desc"}))

    @app.get("/api/runs")
    def runs_json():
        return index.runs()  # the same rows as `leantune runs ls --json`

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: str):
        return render(request, "run.html", page=pages.run_page(index.find(run_id)), curve_names=pages.CURVES)

    @app.get("/api/runs/{run_id}")
    def run_json(run_id: str):
        """What a run page's charts poll while the run is live: its curves, status and steps."""
        row = index.find(run_id)
        return {"run": row, "curves": pages.curves(read_jsonl(Path(row["path"]) / "metrics.jsonl")),
                "live": pages.is_live(row)}

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, run: list[str] = Query(default=[])):
        chosen = list(dict.fromkeys(run))
        if len(chosen) < 2:
            raise UserError("Compare needs at least two runs: tick them on the runs page, then press Compare.")
        return render(request, "compare.html", page=pages.compare_page([index.find(r) for r in chosen], evals))

    @app.get("/budgets", response_class=HTMLResponse)
    def budgets(request: Request):
        return render(request, "budgets.html", page=pages.budgets_page(index))

    @app.get("/registry", response_class=HTMLResponse)
    def registry(request: Request):
        return render(request, "registry.html", page=pages.registry_page(index))

    @app.get("/drift", response_class=HTMLResponse)
    def drift(request: Request):
        return render(request, "drift.html", page=pages.drift_page(index))

    @app.get("/plan", response_class=HTMLResponse)
    def plan_page(request: Request):
        form = {k: request.query_params.get(k, "") for k in PLAN_FIELDS}
        result, problem = None, None
        if form["model"]:
            try:
                result = _plan(form)
            except UserError as e:
                problem = str(e)
        return render(request, "plan.html", status=400 if problem else 200, form=form, result=result, problem=problem,
                      presets=sorted(PRESETS), gpus=sorted(catalog, key=lambda k: catalog[k].memory_gib),
                      query=urlencode({k: v for k, v in form.items() if v}))

    @app.get("/api/plan")
    def plan_json(request: Request):
        """The same answer as `leantune plan --json` for the same options (names as on the plan page)."""
        form = {k: request.query_params.get(k, "") for k in PLAN_FIELDS}
        if not form["model"]:
            raise UserError("Say which model: model=smollm2-135m (a preset), a model directory or a .gguf file.")
        return _plan(form)

    # ------------------------------------------------------------------ writing
    async def _form(request: Request) -> dict:
        # urlencoded forms parsed here: no python-multipart dependency for three small forms
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def _client(request: Request) -> str:
        return request.client.host if request.client else "?"

    async def _write(request: Request, action: str, describe, perform, back: str):
        """Confirm first (a page that says what will change), then check the token, do it, log it, go back."""
        form = await _form(request)
        try:
            policy.check(_token_of(request, form))
        except actions.NotAllowed as e:
            actions.log_action(index, _client(request), action, f"refused ({e})")
            raise
        if form.get("confirmed") != "yes":
            return render(request, "confirm.html", what=describe(form), form=form, action=request.url.path)
        try:
            done = perform(form)
        except UserError as e:
            actions.log_action(index, _client(request), action, f"failed ({e})")
            raise
        actions.log_action(index, _client(request), action, done)
        return RedirectResponse(f"{back}?{urlencode({'done': done})}", status_code=303)

    @app.post("/registry/promote")
    async def promote(request: Request):
        def version(form):
            try:
                return int(form.get("version", ""))
            except ValueError:
                raise UserError(f"Version {form.get('version')!r} is not a number.") from None

        return await _write(request, "promote", lambda f: actions.describe_promote(index, f.get("name", ""), version(f), f.get("stage", "")),
                            lambda f: actions.do_promote(index, f.get("name", ""), version(f), f.get("stage", "")), "/registry")

    @app.post("/registry/rollback")
    async def rollback(request: Request):
        return await _write(request, "rollback", lambda f: actions.describe_rollback(index, f.get("name", "")),
                            lambda f: actions.do_rollback(index, f.get("name", "")), "/registry")

    @app.post("/budgets/set")
    async def budget(request: Request):
        return await _write(request, "budget",
                            lambda f: f"project '{f.get('project', '')}': budget ${f.get('usd', '')}",
                            lambda f: actions.do_budget(index, f.get("project", ""), f.get("usd", "")), "/budgets")

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume other machines can reach it


def _plan(form: dict) -> dict:
    def number(key, kind=int):
        value = form.get(key) or None
        if value is None:
            return None
        try:
            return kind(value)
        except ValueError:
            raise UserError(f"{key}={value!r} is not a number.") from None

    ckpt = {"on": True, "off": False}.get(form.get("grad_checkpointing") or "")
    result = plan_from_options(None, form["model"], form.get("method") or None, form.get("gpu") or None,
                               number("gpus") or 1, number("seq_len"), number("batch"), form.get("tokens") or None, None,
                               number("epochs", float), number("rank"), ckpt, form.get("optimizer") or "adamw",
                               form.get("sharding") or "none", "sdpa", False, number("budget", float),
                               form.get("spot") in ("1", "on", "true"), None, None)
    return json.loads(json.dumps(result.to_dict()))  # the CLI's --json, number for number
