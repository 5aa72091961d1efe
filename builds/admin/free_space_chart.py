"""The agent page's chart of free space: an SVG drawn on the server (no script), time across, GiB up from 0.

The y axis always starts at 0, so that a flat 76.1 GiB reads flat and a drop reads as large as it is; the agent's
keep-free threshold, when set, is a dashed line.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.template.loader import render_to_string
from django.utils import timezone

GiB = 1024 ** 3
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 16, 44  # room for the axes' labels


@dataclass
class Tick:
    at: float  # the pixel on its axis
    label: str


def nice_step(top: float, ticks: int = 5) -> float:
    """A step of 1, 2, 2.5 or 5 times a power of ten that cuts 0..top into about `ticks` parts."""
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def gib_label(value: float) -> str:
    return f"{value:g} GiB"


def free_space_svg(points: list[tuple[datetime, int]], *, keep_free: int | None = None, caption: str = "") -> str:
    """The chart of (time, free bytes) points, oldest first."""
    values = [free for _, free in points] + ([keep_free] if keep_free else [])
    top_gib = max(max(values) / GiB, 0.001) * 1.1
    step = nice_step(top_gib)
    y_max = step * math.ceil(top_gib / step)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_h

    def y(size: int) -> float:
        return round(bottom - size / GiB / y_max * plot_h, 1)

    first, last = points[0][0], points[-1][0]
    if last - first < timedelta(minutes=1):  # one moment: a short span around it
        first, last = first - timedelta(minutes=30), last + timedelta(minutes=30)
    span = (last - first).total_seconds()

    def x(at: datetime) -> float:
        return round(LEFT + (at - first).total_seconds() / span * plot_w, 1)

    date_format = "%H:%M" if span <= 86400 and timezone.localtime(first).date() == timezone.localtime(last).date() \
        else "%m-%d %H:%M"
    y_ticks = [Tick(at=round(bottom - i * step / y_max * plot_h, 1), label=gib_label(round(i * step, 6)))
               for i in range(int(round(y_max / step)) + 1)]
    x_ticks = [Tick(at=round(LEFT + i / 3 * plot_w, 1),
                    label=timezone.localtime(first + timedelta(seconds=span * i / 3)).strftime(date_format))
               for i in range(4)]
    dots = [{"x": x(at), "y": y(free), "title": f"{timezone.localtime(at):%Y-%m-%d %H:%M}: {free / GiB:.1f} GiB free"}
            for at, free in points]
    return render_to_string("admin/builds/agent/free_space_chart.svg", {
        "width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP, "bottom": bottom,
        "y_ticks": y_ticks, "x_ticks": x_ticks, "dots": dots,
        "line": " ".join(f"{dot['x']},{dot['y']}" for dot in dots),
        "keep_free": {"y": y(keep_free), "label": f"keep free {keep_free / GiB:.1f} GiB"} if keep_free else None,
        "time_zone": timezone.get_current_timezone_name(), "caption": caption,
        "x_label_y": bottom + 18, "x_title_y": HEIGHT - 4, "y_title_x": 14, "middle_y": TOP + plot_h / 2,
        "middle_x": LEFT + plot_w / 2,
    })
