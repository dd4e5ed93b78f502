"""The command line: the `crawler` group and the crawl commands (`main`), the read-side
commands (`results`), the live dashboard (`dashboard`, its page in `static/`), the spider
commands (`spiders`: list, new, parse, record), `bench`, the spider template of `crawler new`
(`scaffold`) and what every command shares: options, errors turned into one line and an
exit code (`common`), read-only connections (`readonly`).

Enters: argv. Leaves: exit codes. No crawl logic here.
"""
