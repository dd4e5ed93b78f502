"""The crawler's test suite: real servers on loopback, real SQLite files, real subprocesses."""
