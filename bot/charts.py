"""The ``usage`` chart: tokens per day and the month's running total against its caps.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
state), imported only when a chart is drawn: most processes never draw one, and matplotlib
costs tens of MiB. Two panels share the days of the month on the x axis:

- tokens per day, this month (blue) beside last month (grey);
- the running total of tokens this month and last, the token cap as a red line, and dollars
  on a second axis (spend on a managed plan, an estimate from list prices for BYOK) with the
  dollar cap as a dashed line.
"""

from __future__ import annotations

import asyncio
import calendar
import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.flows.base import Services
    from core.budget import Caps

_THIS = "#2f6fd6"
_LAST = "#a8a8a8"
_CAP = "#d62f2f"
_COST = "#1f9d55"


@dataclass(frozen=True, slots=True)
class UsageSeries:
    """One month's usage: tokens and dollars per day of the month (1-based)."""

    month: date
    tokens: Mapping[int, int] = field(default_factory=dict)
    usd: Mapping[int, float] = field(default_factory=dict)

    @property
    def days(self) -> int:
        return calendar.monthrange(self.month.year, self.month.month)[1]


@dataclass(frozen=True, slots=True)
class ChartSpec:
    """Everything on the chart. ``today`` ends this month's running lines."""

    this: UsageSeries
    last: UsageSeries
    today: int
    token_cap: int | None = None
    usd_cap: float | None = None
    usd_label: str = "estimated cost"
    # False when no model's price is known: the chart then shows no dollar axis.
    priced: bool = True


def _running(per_day: Mapping[int, float], until: int) -> list[float]:
    return list(itertools.accumulate(per_day.get(d, 0) for d in range(1, until + 1)))


def _tokens(value: float, _: object = None) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            text = f"{value / size:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{value:.0f}"


def render(spec: ChartSpec) -> bytes:
    """The chart as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    this, last = spec.this, spec.last
    days = max(this.days, last.days)
    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.2))
    this_name, last_name = f"{this.month:%B %Y}", f"{last.month:%B}"
    fig.suptitle(f"Usage in {this_name}", fontsize=13, fontweight="bold")

    width = 0.4
    xs_last = [d - width / 2 for d in range(1, last.days + 1)]
    xs_this = [d + width / 2 for d in range(1, this.days + 1)]
    top.bar(
        xs_last, [last.tokens.get(d, 0) for d in range(1, last.days + 1)],
        width=width, color=_LAST, label=last_name,
    )  # fmt: skip
    top.bar(
        xs_this, [this.tokens.get(d, 0) for d in range(1, this.days + 1)],
        width=width, color=_THIS, label=this_name,
    )  # fmt: skip
    top.set_ylabel("tokens per day")
    top.yaxis.set_major_formatter(FuncFormatter(_tokens))
    top.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False, fontsize=9)
    top.grid(axis="y", alpha=0.3)

    running_last = _running(last.tokens, last.days)
    running_this = _running(this.tokens, spec.today)
    bottom.plot(
        range(1, last.days + 1), running_last, color=_LAST, linestyle="--",
        label=f"{last_name} total",
    )  # fmt: skip
    bottom.plot(
        range(1, spec.today + 1), running_this, color=_THIS, linewidth=2.2, marker="o",
        markersize=3, label=f"{this_name} total",
    )  # fmt: skip
    if running_this:
        bottom.annotate(
            _tokens(running_this[-1]),
            (spec.today, running_this[-1]),
            textcoords="offset points", xytext=(4, 6), color=_THIS, fontsize=9,
        )  # fmt: skip
    if spec.token_cap is not None:
        bottom.axhline(spec.token_cap, color=_CAP, linewidth=1.5)
        bottom.annotate(
            f"cap {_tokens(spec.token_cap)} tokens",
            (1, spec.token_cap), textcoords="offset points", xytext=(2, 4),
            color=_CAP, fontsize=9,
        )  # fmt: skip
    bottom.set_ylabel("tokens this month")
    bottom.yaxis.set_major_formatter(FuncFormatter(_tokens))
    highest = max([*running_this, *running_last, spec.token_cap or 0, 1])
    bottom.set_ylim(0, highest * 1.15)
    bottom.grid(axis="y", alpha=0.3)
    handles: list[Any] = []
    labels: list[str] = []
    if spec.priced:
        money = bottom.twinx()
        money.plot(
            range(1, spec.today + 1), _running(this.usd, spec.today), color=_COST,
            linewidth=1.6, label=f"{spec.usd_label} (right)",
        )  # fmt: skip
        if spec.usd_cap is not None:
            money.axhline(spec.usd_cap, color=_COST, linestyle=":", linewidth=1.5)
            money.annotate(
                f"cap ${spec.usd_cap:,.2f}",
                (days, spec.usd_cap), textcoords="offset points", xytext=(-70, -13),
                color=_COST, fontsize=9,
            )  # fmt: skip
        money.set_ylabel(f"{spec.usd_label}, USD")
        money.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:,.2f}"))
        spent = _running(this.usd, spec.today)
        money.set_ylim(0, max([*spent, spec.usd_cap or 0, 0.01]) * 1.15)
        handles, labels = money.get_legend_handles_labels()
    h, lab = bottom.get_legend_handles_labels()
    bottom.legend(
        h + handles, lab + labels, loc="lower left", bbox_to_anchor=(0, 1), ncol=3,
        frameon=False, fontsize=9,
    )  # fmt: skip
    bottom.set_xlim(0.4, days + 0.6)
    bottom.set_xlabel("day of the month")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=16))
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


async def usage_chart(
    services: Services, tenant_id: str, *, byok: bool, caps: Caps | None
) -> bytes:
    """This month and last for ``tenant_id``, priced from the proxy's routes or list prices."""
    from core.prices import BYOK_PRICES, cost_usd
    from core.usage import model_days

    today = services.clock.now().date()
    last_month = previous_month(today)
    rows = await model_days(services.usage, tenant_id, last_month, today + timedelta(days=1))
    if byok:
        table: Mapping[str, tuple[float, float]] = BYOK_PRICES
    else:
        table = {
            name: (r.input_usd_per_mtok, r.output_usd_per_mtok)
            for name, r in services.config.proxy.models.items()
        }
    priced_rows = [
        (
            r.day,
            r.input_tokens + r.output_tokens,
            cost_usd(r.model, r.input_tokens, r.output_tokens, table),
        )
        for r in rows
    ]
    this, priced_now = series(today, priced_rows)
    last, priced_before = series(last_month, priced_rows)
    spec = ChartSpec(
        this=this,
        last=last,
        today=today.day,
        token_cap=caps.tokens if caps else None,
        usd_cap=caps.usd if caps else None,
        usd_label="estimated cost" if byok else "spend",
        priced=priced_now or priced_before,
    )
    # Drawing takes a CPU-bound fraction of a second: off the event loop.
    return await asyncio.to_thread(render, spec)


def previous_month(day: date) -> date:
    first = day.replace(day=1)
    return (first.replace(year=first.year - 1, month=12) if first.month == 1 else
            first.replace(month=first.month - 1))  # fmt: skip


def series(month: date, rows: Sequence[tuple[date, int, float | None]]) -> tuple[UsageSeries, bool]:
    """A month's series from ``(day, tokens, usd or None)`` rows; and whether any was priced."""
    tokens: dict[int, int] = {}
    usd: dict[int, float] = {}
    priced = False
    for day, count, dollars in rows:
        if (day.year, day.month) != (month.year, month.month):
            continue
        tokens[day.day] = tokens.get(day.day, 0) + count
        if dollars is not None:
            priced = True
            usd[day.day] = usd.get(day.day, 0.0) + dollars
    return UsageSeries(month.replace(day=1), tokens, usd), priced
