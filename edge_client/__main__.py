"""`python -m edge_client`: run a simulated fleet against the broker the FEDSAGA_* settings name.

The broker comes from the same settings as every fedsaga process (FEDSAGA_MQTT_URL or
FEDSAGA_MQTT_HOST/PORT, FEDSAGA_MQTT_CA_FILE, a config file: services/runtime/settings.py).
On a broker with passwords (mosquitto/prod.conf), `--passwords FILE` gives each device its
own: lines `device-id:password`, and each device logs in as its id.
"""

import argparse
import asyncio
import contextlib
from pathlib import Path

from edge_client.fleet import Fleet, FleetSpec
from services.runtime.settings import Settings


def read_passwords(path: Path) -> dict[str, str]:
    """`device-id:password` lines (blank lines and # comments skipped)."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        device_id, sep, password = line.partition(":")
        if not sep or not device_id or not password:
            raise SystemExit(f"{path}:{number}: expected device-id:password")
        out[device_id] = password
    return out


def main() -> None:
    """Parse the fleet's size, skew and seed; run until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="dev", help="device ids are PREFIX-0000, ...")
    parser.add_argument("--slowdown", type=float, default=0.0, help="extra seconds per training")
    parser.add_argument(
        "--low-battery-share", type=float, default=0.1, help="devices that start nearly empty"
    )
    parser.add_argument("--passwords", type=Path, help="device-id:password lines")
    args = parser.parse_args()
    settings = Settings()
    spec = FleetSpec(
        devices=args.devices,
        alpha=args.alpha,
        seed=args.seed,
        prefix=args.prefix,
        slowdown_s=args.slowdown,
        low_battery_share=args.low_battery_share,
        data_seed=settings.data_seed,
        holdout_fraction=settings.holdout_fraction,
    )
    passwords = read_passwords(args.passwords) if args.passwords else None
    missing = [d for d in spec.device_ids() if passwords is not None and d not in passwords]
    if missing:  # it would log in with no password, or another device's
        raise SystemExit(f"{args.passwords}: no password for {', '.join(missing[:5])}")

    async def run() -> None:
        async with Fleet(spec, settings.mqtt_endpoint(), passwords=passwords):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
