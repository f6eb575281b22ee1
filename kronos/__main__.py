"""`python -m kronos`."""

from kronos.cli import main

main()
