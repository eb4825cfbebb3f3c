"""`python -m eta`: the `eta` command."""

from eta.commands.main import main

main()
