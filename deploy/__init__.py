"""How fedsaga runs: private servers for local runs, and the local stack launcher."""
