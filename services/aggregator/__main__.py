"""`python -m services.aggregator`."""

from services.runtime import main

main("aggregator")
