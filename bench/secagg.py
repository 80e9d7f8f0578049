"""Secure-aggregation cost per client: plain float32 upload, SecAgg+ and full-graph SecAgg.

Run from the repository root: ``.venv/bin/python bench/secagg.py [--clients 100 1000]``.

Each row runs one whole round in memory (`federated.secagg.simulate_secagg`) with real secrets
from `os.urandom`: 5% of the clients drop after sharing keys and before sending their masked
input, another 5% after sending it, so the server rebuilds both kinds of secret. SecAgg+ takes
(k, t) from `choose_params(n, dropout=0.1)`; full graph means k = n - 1, t = n // 2 + 1.
Figures are means over the clients that finished the round: bytes they sent (keys, sealed
shares, masked input, unmask shares) and received (neighbour keys, sealed shares, the unmask
request; the model download is the same for every scheme and left out), and the CPU time of
their own steps. "exact" checks the ring total against the plain sum of the survivors' codes.
Full-graph SecAgg at 1,000 clients is skipped: every client would run ~1,000 key agreements and
evaluate two degree-500 polynomials at 1,000 points, about 100x the 100-client full-graph cost
per client and 1,000x in total; its bytes are given from the message sizes instead.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

from federated.secagg import FixedPoint, choose_params, make_config, simulate_secagg

MODEL_PARAMS = 2_410  # the small MLP (64, 32, 10)
CLIP = 1.0
DESIGN_DROPOUT = 0.1
FULL_GRAPH_MAX_CLIENTS = 300


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    clients: int
    scheme: str
    degree: str
    threshold: str
    sent: float
    received: float
    client_ms: float | None
    server_s: float | None
    exact: str


def plain_row(n: int, m: int, rng: np.random.Generator) -> Row:
    """Return the cost of uploading float32 updates as they are."""
    x = rng.uniform(-1.0, 1.0, size=(n, m)).astype(np.float32)
    start = time.thread_time()
    sizes = [len(row.tobytes()) for row in x]
    cpu = (time.thread_time() - start) / n
    return Row(n, "plain float32", "-", "-", float(np.mean(sizes)), 0.0, cpu * 1e3, None, "-")


def secagg_row(n: int, m: int, degree: int, scheme: str, rng: np.random.Generator) -> Row:
    """Return the measured cost of one SecAgg(+) round with 5% + 5% dropouts."""
    config = make_config(n, m, clip=CLIP, rng=rng, degree=degree)
    x = rng.uniform(-1.0, 1.0, size=(n, m))
    order = rng.permutation(n)
    cut = round(0.05 * n)
    before, after = order[:cut].tolist(), order[cut : 2 * cut].tolist()
    result = simulate_secagg(
        x, config, drop_before_input=before, drop_after_input=after, random_bytes=os.urandom
    )
    finished = [c for i, c in result.costs.items() if i not in set(before) | set(after)]
    codes = np.sum([config.encoding.encode(x[i]) for i in result.survivors], axis=0)
    exact = "yes" if np.array_equal(result.encoded_total, codes.astype(np.uint32)) else "NO"
    return Row(
        clients=n,
        scheme=scheme,
        degree=str(config.degree),
        threshold=str(config.threshold),
        sent=float(np.mean([c.bytes_sent for c in finished])),
        received=float(np.mean([c.bytes_received for c in finished])),
        client_ms=float(np.mean([c.cpu_seconds for c in finished])) * 1e3,
        server_s=result.server_cpu_seconds,
        exact=exact,
    )


def analytic_row(n: int, m: int, scheme: str) -> Row:
    """Return full-graph bytes from the message sizes (no dropouts), without running it."""
    k, t = n - 1, n // 2 + 1
    sent = (4 + 64) + k * (8 + 12 + 8 + 2 * 33 + 16) + (4 + 4 * m) + 4 + (k + 1) * 41
    received = k * (4 + 64) + k * (8 + 12 + 8 + 2 * 33 + 16) + 4 * n
    return Row(n, scheme + " (sizes only)", str(k), str(t), sent, received, None, None, "skipped")


def print_table(rows: list[Row], m: int) -> None:
    """Print the rows with bytes relative to the plain upload of the same client count."""
    plain = {r.clients: r.sent for r in rows if r.scheme == "plain float32"}
    steps = ", ".join(f"{FixedPoint(CLIP, n).resolution:.1e} at n={n:,}" for n in plain)
    print(f"model: {m:,} parameters; clip {CLIP}; fixed-point step per client {steps}")
    head = (
        f"{'clients':>7}  {'scheme':<30} {'k':>4} {'t':>4} {'sent B':>9} {'x plain':>8}"
        f" {'recv B':>9} {'client CPU ms':>13} {'server CPU s':>12}  exact"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = "-" if r.client_ms is None else f"{r.client_ms:.2f}"
        srv = "-" if r.server_s is None else f"{r.server_s:.2f}"
        print(
            f"{r.clients:>7,}  {r.scheme:<30} {r.degree:>4} {r.threshold:>4}"
            f" {r.sent:>9,.0f} {r.sent / plain[r.clients]:>8.2f} {r.received:>9,.0f}"
            f" {ms:>13} {srv:>12}  {r.exact}"
        )


def main() -> None:
    """Run the table for each client count, then SecAgg+ at 100 clients for growing models."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--params", type=int, default=MODEL_PARAMS)
    parser.add_argument("--scaling", type=int, nargs="*", default=[24_100, 241_000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    m = args.params
    wall = time.perf_counter()
    rows: list[Row] = []
    for n in args.clients:
        k, _ = choose_params(n, dropout=DESIGN_DROPOUT)
        rows.append(plain_row(n, m, rng))
        rows.append(secagg_row(n, m, k, f"SecAgg+ (design dropout {DESIGN_DROPOUT:.0%})", rng))
        if n <= FULL_GRAPH_MAX_CLIENTS:
            rows.append(secagg_row(n, m, n - 1, "full-graph SecAgg", rng))
        else:
            rows.append(analytic_row(n, m, "full-graph SecAgg"))
    print_table(rows, m)
    if args.scaling:
        n = 100
        k, _ = choose_params(n, dropout=DESIGN_DROPOUT)
        print(f"\nscaling with model size: SecAgg+ at {n} clients (k = {k})")
        for size in args.scaling:
            scaled = [plain_row(n, size, rng), secagg_row(n, size, k, "SecAgg+", rng)]
            print_table(scaled, size)
    print(f"\nwall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
