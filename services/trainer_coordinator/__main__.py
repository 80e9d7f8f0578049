"""`python -m services.trainer_coordinator`."""

from services.runtime import main

main("trainer_coordinator")
