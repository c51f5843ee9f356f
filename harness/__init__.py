"""The dev harness beside the product: the local testbed, the example app, the load generator, bench, demo
and the in-memory transport the unit tests run the executor through.

Never installed with deploytasks: only this repository's tasks.py and tests import it."""
