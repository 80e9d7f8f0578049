"""`python -m services.validator`."""

from services.runtime import main

main("validator")
