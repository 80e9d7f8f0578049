"""`python -m services.distributor`."""

from services.runtime import main

main("distributor")
