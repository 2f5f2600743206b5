"""`equiv bench`: suites of real networks, results written to results/."""
