"""The dev harness beside the product: the local testbed, the example app, the load generator, bench and demo.

Never installed with deploytasks: only this repository's tasks.py and tests import it."""
