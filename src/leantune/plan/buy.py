"""Rent or buy (`leantune plan ... --buy`): the cost of owning the GPUs a plan picked against renting them, for the
user's own workload - the planned run, repeated `runs_per_week` times.

Owning, per GPU: the purchase price (catalog `purchase_usd`: street prices, dated) written off straight-line over
`depreciation_years`, plus electricity (the card's `tdp_watts` x `pue` at `usd_per_kwh`) for the hours it trains;
the host machine, space and people are not counted (say so: they raise the break-even). Renting: the planned
GPU-hours (with each instance's start-up and minimum billing, plan/timing.py) at the on-demand or spot price.

Break-even: owning costs purchase / (52 x years) a week however little it runs, plus power per hour; renting costs
the rate per hour. They meet at  hours/week = purchase / (52 x years) / (rate - power per hour).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .recommend import Candidate

WEEKS_PER_YEAR = 52.0
HOURS_PER_WEEK = 168.0


@dataclass
class OwnOrRent:
    gpu: str
    gpus: int
    purchase_usd: float  # all the plan's GPUs
    job_hours: float  # one run's training hours (an owned machine pays no cloud start-up)
    job_rent_usd: float  # one run rented, start-up and minimum billing included
    power_usd_per_hour: float  # all the plan's GPUs at full power, PUE included
    rent_usd_per_hour: float  # all the plan's GPUs
    runs_per_week: float
    years: float
    break_even_hours_per_week: float | None  # GPU-machine hours a week above which owning is cheaper; None: never
    totals: dict[int, dict[str, float]]  # years -> {"own", "rent_on_demand", "rent_spot"} for this workload

    @property
    def break_even_utilisation(self) -> float | None:
        return None if self.break_even_hours_per_week is None else self.break_even_hours_per_week / HOURS_PER_WEEK

    @property
    def one_off_ratio(self) -> float:
        """Buying the cards for one run against renting them once: the first seed's 'up to 12x cheaper'."""
        return self.purchase_usd / self.job_rent_usd


def own_or_rent(c: Candidate, runs_per_week: float = 1.0, usd_per_kwh: float = 0.15, pue: float = 1.3,
                depreciation_years: float = 3.0, spot: bool = False) -> OwnOrRent:
    g, n = c.gpu, c.setup.gpus
    if g.purchase_usd is None or g.tdp_watts is None:
        raise ConfigError(f"No purchase price or power for {g.name} (a cloud-only card); add purchase_usd and "
                          "tdp_watts with --prices FILE.")
    if runs_per_week <= 0 or depreciation_years <= 0 or usd_per_kwh < 0 or pue < 1:
        raise ConfigError("--runs-per-week and --years must be positive, --kwh-usd not negative, --pue at least 1.")
    rate = (g.spot_usd if spot else g.on_demand_usd) * n
    purchase = g.purchase_usd * n
    power = g.tdp_watts / 1000 * pue * usd_per_kwh * n
    weekly_capital = purchase / (WEEKS_PER_YEAR * depreciation_years)
    break_even = weekly_capital / (rate - power) if rate > power else None
    job_rent = c.price(spot)
    hours_per_week = c.time.hours * runs_per_week
    totals = {}
    for years in (1, 2, 3):
        weeks = WEEKS_PER_YEAR * years
        # what is owned after `years` still holds its undepreciated value
        kept = purchase * max(0.0, 1 - years / depreciation_years)
        totals[years] = {
            "own": purchase - kept + power * hours_per_week * weeks,
            "rent_on_demand": (c.time.cost_on_demand or 0.0) * runs_per_week * weeks,
            "rent_spot": (c.time.cost_spot or 0.0) * runs_per_week * weeks,
        }
    return OwnOrRent(g.key, n, purchase, c.time.hours, job_rent, power, rate, runs_per_week, depreciation_years,
                     break_even, totals)


def seed_claims(result: OwnOrRent) -> list[str]:
    """The second seed's two claims, checked with this model's own numbers for this workload."""
    twelve_x_hours = result.purchase_usd / 12 / result.rent_usd_per_hour
    lines = [f"one-off run: buying the {result.gpus} x {result.gpu} costs {result.one_off_ratio:,.0f}x renting them "
             f"once; the seed's 'cloud up to 12x cheaper for one-off runs' is this model's figure for a one-off run of "
             f"{twelve_x_hours:,.0f} hours ({twelve_x_hours / 24:,.0f} days); shorter runs favour renting more"]
    if result.break_even_hours_per_week is None:
        lines.append("owning never pays: electricity costs more per hour than renting")
    else:
        h = result.break_even_hours_per_week
        verdict = "agrees" if 30 <= h <= 50 else "disagrees"
        lines.append(f"owning pays above {h:,.0f} machine-hours a week ({h / HOURS_PER_WEEK:.0%} utilisation) over "
                     f"{result.years:g} years; the seed says ~40 hours over 2-3 years: {verdict}")
    return lines
