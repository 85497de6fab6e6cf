"""Plain-text rendering of a metrics dict."""

from __future__ import annotations

import math
from collections.abc import Mapping


def _format_value(value: object, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def format_table(metrics: Mapping[str, object], digits: int = 4) -> str:
    """Render ``{name: value}`` as a Markdown table (floats with ``digits`` decimals), in the dict's order.

    >>> print(format_table({"acc@0.5": 0.932, "n": 10}))
    | metric  | value  |
    |---------|--------|
    | acc@0.5 | 0.9320 |
    | n       | 10     |
    """
    rows = [(str(k), _format_value(v, digits)) for k, v in metrics.items()]
    w_name = max([len("metric")] + [len(k) for k, _ in rows])
    w_value = max([len("value")] + [len(v) for _, v in rows])
    lines = [
        f"| {'metric'.ljust(w_name)} | {'value'.ljust(w_value)} |",
        f"|{'-' * (w_name + 2)}|{'-' * (w_value + 2)}|",
    ]
    lines += [f"| {k.ljust(w_name)} | {v.ljust(w_value)} |" for k, v in rows]
    return "\n".join(lines)
