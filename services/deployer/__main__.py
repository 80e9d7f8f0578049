"""`python -m services.deployer`."""

from services.runtime import main

main("deployer")
