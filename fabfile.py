from tasks import ns  # noqa: F401  (fab finds the same collection as inv)
