"""The multi-host rehearsal (`make rehearsal`, `python -m tests.rehearsal`): hosts made of real
processes, each on a loopback address of its own, broken one fault at a time under a steady load.
What it does and how each figure is measured: docs/rehearsal.md."""
