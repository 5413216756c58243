"""`python -m edgekd` (what `torchrun ... -m edgekd compress` runs)."""

from edgekd.cli import main

main()
