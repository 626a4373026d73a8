"""Chaos suite: real processes, real crashes, and a check that no accepted job is lost or done
twice (issue 5). Run `python -m tests.chaos [--scenarios S1,S5] [--jobs 200]`; see docs/chaos.md.

Modules: `procs` (processes, Postgres and Redis servers), `stack` (the whole service on
loopback), `load` (the HTTP client), `measure` (what the database, the fake Replicate and the
storage say), `scenarios` (S1-S10), `cog` (S10's Cog servers), `runner` (one scenario end to end).
"""
