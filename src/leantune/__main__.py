"""`python -m leantune ...`: what torchrun starts on each process (`torchrun ... -m leantune train run.yaml`)."""

from .cli import main

main()
