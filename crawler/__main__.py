"""`python -m crawler` runs the command line."""

from crawler.cli.main import main

main()
