"""The round report: written from a real round's Redis state, rendered in headless Chromium.

A page can be written and still show nothing (a wrong image path, a PNG the browser cannot
decode), so the check is the browser's: every image loaded (the page titles itself once they
have), and the screenshot holds the plots' colours where a page with missing images holds
none.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from fedsaga.report import write_report
from schemas.ops import Chaos
from tests.integration.conftest import cli_env, fedsaga, request

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # `make deps` installs it
PLOTS = ("accuracy.png", "participation.png", "bytes.png")


async def chromium(url: str, *options: str, profile: Path) -> bytes:
    """Run headless Chromium on `url` with `options`; its standard output."""
    argv = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",  # a profile of its own: other Chromiums may be running
        "--window-size=1000,2400",
        "--virtual-time-budget=10000",  # let the page load and run its script
        *options,
        url,
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out


async def screenshot(page: Path, profile: Path) -> np.ndarray:
    """The page as Chromium draws it, as RGB floats in [0, 1]."""
    shot = page.with_suffix(".screenshot.png")
    await chromium(page.as_uri(), f"--screenshot={shot}", profile=profile)
    return np.asarray(imread(shot))[..., :3]


def coloured(pixels: np.ndarray) -> int:
    """How many pixels are clearly coloured (text, borders and background are grey)."""
    return int(((pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.25).sum())


async def test_a_round_report_renders_its_plots_in_headless_chromium(
    stack: LocalStack, saga: FedSaga, fleet: Fleet, tmp_path: Path
) -> None:
    # Prepare: a round, whose iterations the validator scores while it runs
    req = request()
    run = asyncio.create_task(saga.run(req, timeout=60))
    async with asyncio.timeout(30):
        while not await saga.store.accuracies(req.round_id):
            await asyncio.sleep(0.05)
    assert (await saga.store.get_round(req.round_id)).running
    result = await run
    assert result.status == "succeeded", result.failure_reason
    async with asyncio.timeout(10):
        while len(await saga.store.accuracies(req.round_id)) < req.training_rounds:
            await asyncio.sleep(0.05)
    scores = await saga.store.accuracies(req.round_id)

    # Execute: as an operator would
    made = await fedsaga(
        "round", "report", req.round_id, "--out", str(tmp_path / "report"), env=cli_env(stack)
    )
    assert made.returncode == 0, made.stderr
    page = tmp_path / "report" / "index.html"
    assert made.stdout.strip() == f"wrote {page}"

    # Assert: the page and its plots are written
    for name in PLOTS:
        assert (page.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (page.parent / "epsilon.png").exists()
    text = page.read_text()
    assert f"Round {req.round_id}" in text
    assert "privacy: off" in text
    assert sorted(scores) == [0, 1, 2]
    assert scores[2]["accuracy"] == result.metrics["accuracy"]  # the candidate is the last
    for it, score in scores.items():
        assert f"<td>{it}</td><td>{score['accuracy']:.4f}</td><td>10</td>" in text

    # ...and Chromium loads every image
    profile = tmp_path / "chromium"
    dom = (await chromium(page.as_uri(), "--dump-dom", profile=profile)).decode()
    title = re.search(r"<title>(.*?)</title>", dom)
    assert title is not None, dom[:2000]
    assert title.group(1).startswith(f"plots loaded {len(PLOTS)} of {len(PLOTS)}"), title

    # ...and draws them: against the same page with its images missing, the screenshot
    # holds the plots' colours (blue and orange bars and lines, green participation)
    broken = page.with_name("broken.html")
    broken.write_text(text.replace('src="', 'src="missing-'))
    drawn, blank = await screenshot(page, profile), await screenshot(broken, profile)
    assert drawn.shape == blank.shape
    assert coloured(drawn) > 20_000, coloured(drawn)
    assert coloured(drawn) > 20 * max(coloured(blank), 1), (coloured(drawn), coloured(blank))


async def test_a_failed_rounds_report_shows_why_devices_failed(
    saga: FedSaga, fleet: Fleet, tmp_path: Path
) -> None:
    # Prepare
    result = await saga.run(request(simulate_failure=Chaos.PARTICIPATION), timeout=60)
    assert result.status == "failed"

    # Execute
    page = await write_report(saga.store, result.round_id, tmp_path)

    # Assert: each failure reason with its count, in iteration 0's row, and the failure
    text = page.read_text()
    reasons = result.participation["failure_reasons"]
    assert reasons
    for reason, count in reasons.items():
        assert f"{reason}: {count}" in text
    assert "insufficient participation" in text
    assert "privacy: off" in text
    for name in PLOTS:
        assert (tmp_path / name).stat().st_size > 5_000, name


async def test_an_unknown_round_has_no_report(
    stack: LocalStack, saga: FedSaga, tmp_path: Path
) -> None:
    # Execute / Assert
    with pytest.raises(LookupError, match="no round nope in Redis"):
        await write_report(saga.store, "nope", tmp_path)
    made = await fedsaga("round", "report", "nope", "--out", str(tmp_path), env=cli_env(stack))
    assert made.returncode == 2
    assert made.stderr.splitlines()[-1].startswith("error: no round nope in Redis")
    assert not (tmp_path / "index.html").exists()
