"""One way to print a benchmark figure: a readable line, or one JSON object per line."""

from __future__ import annotations

import orjson


class Reporter:
    """Prints figures as ``{"bench", "metric", "value", "unit"}`` lines (json) or as text."""

    def __init__(self, bench: str, *, as_json: bool) -> None:
        self.bench = bench
        self.as_json = as_json
        self.figures: dict[str, float] = {}

    def figure(self, metric: str, value: float, unit: str) -> None:
        shown: float = round(value) if abs(value) >= 100 else round(value, 3)
        self.figures[metric] = shown
        if self.as_json:
            line = {"bench": self.bench, "metric": metric, "value": shown, "unit": unit}
            print(orjson.dumps(line).decode(), flush=True)
        else:
            print(f"{self.bench:10} {metric:28} {shown:>14,} {unit}", flush=True)

    def note(self, text: str) -> None:
        """Context for a human reader; kept out of the JSON stream."""
        if not self.as_json:
            print(text, flush=True)
