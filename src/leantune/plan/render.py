"""Plans as a person reads them (rich tables) — presentation only, the numbers come from make_plan."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from . import Plan
from .catalog import GPU
from .memory import GiB
from .presets import PRESETS
from .recommend import Candidate


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 0.01:
        return f"${x:.4f}"
    return f"${x:,.2f}" if x < 1000 else f"${x:,.0f}"


def _hours(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:,.1f} h"


def _tokens(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def describe(c: Candidate) -> str:
    s = c.setup
    levers = ", ".join(["adamw"] * (s.optimizer == "adamw") + s.levers())
    return (f"[bold]{s.method}[/] on {s.gpus} x {c.gpu.name}: micro-batch {s.micro_batch} x {s.seq_len} tokens, "
            f"{levers}{', DPO' if s.objective == 'dpo' else ''}")


def levers_text(c: Candidate) -> str:
    """What each lever buys: '-5.1 GiB checkpointing (+33% time)'."""
    parts = []
    for e in c.levers:
        cost = e["time_factor"] - 1
        parts.append(f"{e['lever']} -{e['saves_gib']:.1f} GiB" + (f" ({cost:+.0%} time)" if abs(cost) >= 0.005 else ""))
    return "; ".join(parts) or "none"


def memory_table(c: Candidate) -> Table:
    table = Table()
    table.add_column("memory per GPU")
    table.add_column("GiB", justify="right")
    for name, gib in c.memory.as_gib().items():
        if name not in ("total", "in_cpu_memory") and gib > 0:
            table.add_row(name.replace("_", " "), f"{gib:.2f}")
    verdict = "[green]fits[/]" if c.fits else "[red]does not fit[/]"
    table.add_row(f"[bold]total[/] ({verdict}, {c.gpu.memory_gib:.0f} GiB available)", f"[bold]{c.memory.total / GiB:.2f}[/]")
    if c.memory.in_cpu_memory:
        table.add_row("[dim]activations offloaded to CPU memory (not on the GPU)[/]", f"[dim]{c.memory.in_cpu_memory / GiB:.2f}[/]")
    return table


def ranked_table(plan: Plan) -> Table:
    what = "what fits instead" if plan.chosen is not None else "setups that fit"
    table = Table(title=f"{what}, cheapest {'spot' if plan.spot else 'on-demand'} first", title_justify="left")
    for col in ("#", "method", "GPUs", "micro-batch", "levers: what each saves", "memory/GPU", "tokens/s", "scaling", "time",
                "on demand", "spot"):
        table.add_column(col, justify="right" if col not in ("method", "GPUs", "levers: what each saves") else "left")
    for i, c in enumerate(plan.ranked, 1):
        s = c.setup
        over = plan.budget is not None and c.price(plan.spot) > plan.budget
        table.add_row(
            str(i), s.method, f"{s.gpus} x {c.gpu.key}" + (f" ({c.time.nodes} machines)" if c.time.nodes > 1 else ""),
            str(s.micro_batch), levers_text(c),
            f"{c.memory.total / GiB:.1f}/{c.gpu.memory_gib:.0f} GiB", f"{c.time.tokens_per_s:,.0f}",
            "" if s.gpus == 1 else f"{c.time.scaling_efficiency:.0%}", _hours(c.time.hours),
            _money(c.time.cost_on_demand) + (" (over budget)" if over and not plan.spot else ""),
            _money(c.time.cost_spot) + (" (over budget)" if over and plan.spot else ""),
        )
    return table


def print_plan(plan: Plan, console: Console | None = None) -> None:
    console = console or Console()
    sh = plan.shape
    moe = f", {sh.active_params / 1e9:.2f}B active" if sh.experts else ""
    console.print(f"[bold]{sh.name}[/]: {sh.total_params / 1e9:.3f}B parameters{moe}; {sh.layers} layers, hidden {sh.hidden}, "
                  f"vocabulary {sh.vocab:,}. Training tokens: {_tokens(plan.tokens)} ({plan.tokens_note}).")
    if plan.chosen is not None:
        c = plan.chosen
        console.print(describe(c))
        console.print(memory_table(c))
        if c.levers:
            console.print("levers: " + levers_text(c))
        t = c.time
        link = c.gpu.interconnect if t.nodes == 1 else (
            f"{t.nodes} machines of {c.gpu.gpus_per_node}, {c.gpu.node_link_gbs:g} GB/s between them")
        links = "" if c.setup.gpus == 1 else (f"; {link}: {t.comm_s_per_step * 1e3:,.0f} ms of collectives "
                                               f"a step, {t.scaling_efficiency:.0%} scaling efficiency")
        console.print(f"time: {t.tokens_per_s:,.0f} tokens/s at {t.mfu:.0%} MFU -> {_hours(t.hours)}{links}; "
                      f"+ {_hours(t.startup_hours)} start-up (machine, install, model download) = {t.gpu_hours:,.2f} "
                      f"GPU-hours billed; cost {_money(t.cost_on_demand)} on demand, {_money(t.cost_spot)} spot")
        if plan.budget is not None:
            cost = c.price(plan.spot)
            word = "within" if cost <= plan.budget else "[red]over[/]"
            console.print(f"budget ${plan.budget:,.2f}: {word} ({_money(cost)})")
    if plan.ranked:
        console.print(ranked_table(plan))
        console.print("#1 in detail: " + describe(plan.ranked[0]))
        console.print(memory_table(plan.ranked[0]))
    elif plan.chosen is None:
        console.print("[red]No setup fits on the GPUs considered.[/]")
    for line in plan.not_fitting:
        console.print(f"[dim]does not fit: {line}[/]")
    if plan.gap is not None:
        g = plan.gap
        console.print(
            f"pretraining {sh.name} took ~{_tokens(g.pretraining_tokens)} tokens: 6ND = {g.pretraining_flops:.2e} FLOPs, "
            f"~{g.pretraining_gpu_hours:,.0f} GPU-hours on {plan.best.gpu.key} ({_money(g.pretraining_cost)}). "
            f"This fine-tune: {g.finetune_flops:.2e} FLOPs, {g.orders_of_magnitude:.1f} orders of magnitude less."
        )


def print_models(console: Console | None = None) -> None:
    table = Table(title="model presets")
    for col in ("name", "parameters", "layers", "hidden", "heads/kv", "vocab", "pretraining tokens"):
        table.add_column(col)
    for s in PRESETS.values():
        table.add_row(s.name, f"{s.total_params / 1e9:.3f}B", str(s.layers), str(s.hidden), f"{s.heads}/{s.kv_heads}",
                      f"{s.vocab:,}", _tokens(s.pretraining_tokens) if s.pretraining_tokens else "-")
    (console or Console()).print(table)


def print_gpus(catalog: dict[str, GPU], console: Console | None = None) -> None:
    table = Table(title="GPU catalog (override prices with --prices FILE)")
    for col in ("key", "GPU", "GiB", "bf16 TFLOPs", "TB/s", "on demand $/h", "spot $/h", "price date, source"):
        table.add_column(col)
    for g in catalog.values():
        table.add_row(g.key, g.name, f"{g.memory_gib:g}", f"{g.bf16_tflops:g}", f"{g.bandwidth_tbs:g}", _money(g.on_demand_usd),
                      _money(g.spot_usd), f"{g.price_date}, {g.price_source}")
    (console or Console()).print(table)


def print_own_or_rent(r, console: Console | None = None) -> None:
    """`plan --buy`: owning the plan's GPUs against renting them for this workload (plan/buy.py)."""
    from .buy import seed_claims

    console = console or Console()
    console.print(f"[bold]rent or buy[/] {r.gpus} x {r.gpu}: {_money(r.purchase_usd)} to buy, written off over "
                  f"{r.years:g} years; power {_money(r.power_usd_per_hour)}/h at full load; renting "
                  f"{_money(r.rent_usd_per_hour)}/h. Workload: this run ({_hours(r.job_hours)}) {r.runs_per_week:g} "
                  "time(s) a week.")
    table = Table()
    for col in ("years", "own", "rent on demand", "rent spot"):
        table.add_column(col, justify="right")
    for years, t in r.totals.items():
        table.add_row(str(years), _money(t["own"]), _money(t["rent_on_demand"]), _money(t["rent_spot"]))
    console.print(table)
    for line in seed_claims(r):
        console.print(line, highlight=False)
    console.print("[dim]not counted: the host machine, space, cooling beyond the PUE, people; all raise the break-even[/]")
