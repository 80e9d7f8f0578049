"""`python -m services.selector`."""

from services.runtime import main

main("selector")
