"""`python -m edge_client`: run a simulated fleet against the broker in FEDSAGA_MQTT_*."""

import argparse
import asyncio
import contextlib
import os

from edge_client.fleet import Fleet, FleetSpec


def main() -> None:
    """Parse the fleet's size, skew and seed; run until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="dev", help="device ids are PREFIX-0000, ...")
    parser.add_argument("--slowdown", type=float, default=0.0, help="extra seconds per training")
    args = parser.parse_args()
    host = os.environ.get("FEDSAGA_MQTT_HOST", "127.0.0.1")
    port = int(os.environ.get("FEDSAGA_MQTT_PORT", "1883"))
    spec = FleetSpec(
        devices=args.devices,
        alpha=args.alpha,
        seed=args.seed,
        prefix=args.prefix,
        slowdown_s=args.slowdown,
        low_battery_share=float(os.environ.get("FEDSAGA_LOW_BATTERY_SHARE", "0.1")),
        data_seed=int(os.environ.get("FEDSAGA_DATA_SEED", "0")),
    )

    async def run() -> None:
        async with Fleet(spec, host=host, port=port):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
