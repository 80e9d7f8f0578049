"""A round's report: one HTML page and its PNG plots, drawn from what Redis keeps of the round.

`write_report(store, round_id, out_dir)` writes into `out_dir`:

- `accuracy.png`: holdout accuracy per iteration, as the validator scored each iteration's
  aggregate while the round ran, beside the round's target;
- `participation.png`: per iteration, the devices done and those that failed, by reason;
- `bytes.png`: bytes per device per iteration, down (models) and up (updates), against the
  float32 model;
- `epsilon.png` where the round spent a privacy budget (else the page says "privacy: off");
- `index.html`, which shows them with the round's summary and a table per iteration.

The page sets its title to "plots loaded N of M" once every image has loaded, so a headless
browser can tell a page that renders from one with broken images. The plots need matplotlib
(`pip install 'fedsaga[report]'`).
"""

from __future__ import annotations

import asyncio
import html
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsaga.status import RoundResult, UnknownRound, round_result
from services.runtime import keys
from services.runtime.store import SagaStore
from services.trainer_coordinator.decisions import DONE, FAILED, TRAINING

EPSILON = "epsilon"  # the metric privacy records, per iteration and for the round

# Colours by meaning, the same on every plot: done is green, each failure reason its own.
_DONE, _TRAINING = "#2ca02c", "#9e9e9e"
_REASONS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


@dataclass(frozen=True)
class Iteration:
    """What happened in one iteration of the round."""

    number: int
    metrics: dict[str, float] = field(default_factory=dict)  # the validator's holdout score
    done: int = 0
    training: int = 0  # still training when the round stopped
    failures: dict[str, int] = field(default_factory=dict)  # reason -> devices
    down: list[int] = field(default_factory=list)  # payload bytes, one per device
    up: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        """Holdout accuracy of this iteration's aggregate, if the validator scored it."""
        return self.metrics.get("accuracy")


@dataclass(frozen=True)
class RoundReport:
    """Everything the page shows, read from Redis."""

    result: RoundResult  # what `round status` shows
    model_name: str
    target_accuracy: float
    training_rounds: int
    iterations: list[Iteration]

    @property
    def float32_bytes(self) -> float:
        """The model's size as float32, what the payloads are compared with."""
        return self.result.bytes.get("float32_model", 0.0)

    @property
    def epsilons(self) -> list[tuple[int, float]]:
        """Privacy budget spent by each iteration's end, where the round recorded it."""
        return [(it.number, it.metrics[EPSILON]) for it in self.iterations if EPSILON in it.metrics]


async def gather(store: SagaStore, round_id: str) -> RoundReport:
    """Read a round's report from Redis; LookupError for a round Redis does not know."""
    state = await store.get_round(round_id)
    if not state.exists:
        raise UnknownRound(f"no round {round_id} in Redis (its keys expire after a week)")
    request = state.request
    scores = await store.accuracies(round_id)
    sizes: dict[tuple[int, str], list[int]] = {}
    for payload in await store.traffic(round_id):
        sizes.setdefault((payload.iteration, payload.direction), []).append(payload.size)
    last = max([state.iteration, *scores, *(it for it, _ in sizes)]) if state.start_digest else -1
    iterations = []
    for it in range(last + 1):
        states = Counter((await store.hgetall(keys.iteration(round_id, it))).values())
        iterations.append(
            Iteration(
                number=it,
                metrics=scores.get(it, {}),
                done=states.pop(DONE, 0),
                training=states.pop(TRAINING, 0),
                failures={s.removeprefix(FAILED): n for s, n in sorted(states.items())},
                down=sizes.get((it, "down"), []),
                up=sizes.get((it, "up"), []),
            )
        )
    return RoundReport(
        result=await round_result(store, round_id),
        model_name=state.model_name,
        target_accuracy=request.target_accuracy,
        training_rounds=request.training_rounds,
        iterations=iterations,
    )


# -- the plots -----------------------------------------------------------------------------------


def draw(report: RoundReport, out_dir: Path) -> list[tuple[str, str]]:
    """Write the PNGs; returns (file name, caption) for each, in page order."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # the services do not carry it
        needed = "the round report needs matplotlib: pip install 'fedsaga[report]'"
        raise RuntimeError(needed) from exc

    its = report.iterations
    xs = [it.number for it in its]
    plots: list[tuple[str, str]] = []

    def save(fig: Any, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plots.append((name, caption))

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    scored = [(it.number, it.accuracy) for it in its if it.accuracy is not None]
    ax.plot([x for x, _ in scored], [a for _, a in scored], "o-", label="holdout accuracy")
    ax.axhline(report.target_accuracy, color="k", linestyle="--", label="target")
    _frame(ax, xs, "holdout accuracy", "Accuracy per iteration (the validator, as the round ran)")
    ax.set_ylim(0, 1)
    _legend(ax)
    save(fig, "accuracy.png", "Holdout accuracy of each iteration's aggregate")

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    bottom = [0] * len(its)
    reasons = sorted({r for it in its for r in it.failures})
    bars = [("done", _DONE, [it.done for it in its])]
    bars += [
        (r, _REASONS[i % len(_REASONS)], [it.failures.get(r, 0) for it in its])
        for i, r in enumerate(reasons)
    ]
    bars.append(("still training", _TRAINING, [it.training for it in its]))
    for label, colour, counts in bars:
        if any(counts):
            ax.bar(xs, counts, bottom=bottom, color=colour, label=label)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    _frame(ax, xs, "devices", "Participation per iteration, failures by reason")
    if any(bottom):
        _legend(ax)
    save(fig, "participation.png", "Devices per iteration: done, or failed and why")

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    for direction, offset, colour in (("down", -0.2, "#1f77b4"), ("up", 0.2, "#ff7f0e")):
        rows = [(it.number, getattr(it, direction)) for it in its if getattr(it, direction)]
        means = [statistics.mean(sizes) for _, sizes in rows]
        spread = [
            [m - min(s) for m, (_, s) in zip(means, rows, strict=True)],
            [max(s) - m for m, (_, s) in zip(means, rows, strict=True)],
        ]
        label = "down (model)" if direction == "down" else "up (update)"
        if rows:
            xs_ = [x + offset for x, _ in rows]
            ax.bar(xs_, means, 0.4, yerr=spread, color=colour, label=label, capsize=3)
    if report.float32_bytes:
        ax.axhline(report.float32_bytes, color="k", linestyle="--", label="float32 model")
    _frame(ax, xs, "bytes per device", "Bytes per device per iteration (mean, min to max)")
    _legend(ax)
    save(fig, "bytes.png", "Payload bytes per device per iteration, each way")

    if report.epsilons:
        fig = Figure(figsize=(8, 3))
        ax = fig.add_subplot()
        ax.plot(*zip(*report.epsilons, strict=True), "o-", color="#9467bd")
        _frame(ax, xs, "epsilon spent", "Privacy budget spent")
        save(fig, "epsilon.png", "Epsilon spent by the end of each iteration")
    return plots


def _frame(ax: Any, xs: list[int], ylabel: str, title: str) -> None:
    """Axes every plot shares: iterations along x, a note when none ran."""
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if xs:
        ax.set_xticks(xs)
        ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)  # one iteration: a bar, not a wall
    else:
        ax.text(0.5, 0.5, "no iteration ran", ha="center", transform=ax.transAxes)
    ax.grid(axis="y", alpha=0.3)


def _legend(ax: Any) -> None:
    """The legend beside the plot, where it hides no bar or line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


# -- the page ------------------------------------------------------------------------------------

_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 900px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { width: 800px; display: block; }
.failed { color: #b00020; } .succeeded { color: #1b7e1b; }
"""

# Title the page once every image has finished: "plots loaded N of M" (N < M: some broke).
_READY = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.title = "plots loaded " + loaded + " of " + images.length + " \u2014 " + document.title;
});
"""


def page(report: RoundReport, plots: list[tuple[str, str]]) -> str:
    """The HTML page for a report whose plots are drawn."""
    e, result = html.escape, report.result
    final = result.metrics.get("accuracy")
    summary = [
        ("status", f'<span class="{e(result.status)}">{e(result.status)}</span>'),
        ("model", e(report.model_name)),
        ("versions", e(", ".join(f"{k} {v}" for k, v in result.versions.items() if v)) or "-"),
        ("cohort", str(result.participation.get("cohort", 0))),
        ("iterations", f"{len(report.iterations)} of {report.training_rounds}"),
        ("target accuracy", f"{report.target_accuracy:.3f}"),
        ("candidate accuracy", f"{final:.4f}" if final is not None else "-"),
    ]
    if result.failure_reason:
        summary.append(("failed", e(f"step {result.failed_step}: {result.failure_reason}")))
    rows = "".join(
        "<tr>"
        f"<td>{it.number}</td>"
        f"<td>{'-' if it.accuracy is None else f'{it.accuracy:.4f}'}</td>"
        f"<td>{it.done}</td>"
        f"<td>{e(', '.join(f'{r}: {n}' for r, n in it.failures.items())) or '-'}</td>"
        f"<td>{_mean(it.down)}</td><td>{_mean(it.up)}</td>"
        "</tr>"
        for it in report.iterations
    )
    figures = "".join(
        f'<figure><img src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption>'
        "</figure>"
        for name, caption in plots
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>round {e(result.round_id)}</title><style>{_STYLE}</style></head>
<body>
<h1>Round {e(result.round_id)}</h1>
<table>{"".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)}</table>
<p id="privacy">privacy: {e(_privacy(report))}</p>
{figures}
<h2>Per iteration</h2>
<table><tr><th>iteration</th><th>holdout accuracy</th><th>devices done</th><th>failures</th>
<th>bytes down / device</th><th>bytes up / device</th></tr>{rows}</table>
<script>{_READY}</script>
</body></html>
"""


def _privacy(report: RoundReport) -> str:
    spent = report.result.metrics.get(EPSILON)
    if spent is None and report.epsilons:
        spent = report.epsilons[-1][1]
    return "off" if spent is None else f"on, epsilon spent {spent:.3f}"


def _mean(sizes: list[int]) -> str:
    return f"{statistics.mean(sizes):,.0f}" if sizes else "-"


async def write_report(store: SagaStore, round_id: str, out_dir: Path) -> Path:
    """Write the round's report (index.html and its PNGs) into `out_dir`; returns the page.

    Raises LookupError for a round Redis does not know.
    """
    report = await gather(store, round_id)
    return await asyncio.to_thread(_write, report, out_dir)  # matplotlib and files block


def _write(report: RoundReport, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page(report, draw(report, out_dir)), encoding="utf-8")
    return path
