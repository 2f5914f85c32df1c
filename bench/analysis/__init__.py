"""Finished records as rows and statistics (seeds, paired tests, sweeps, serving); imports core; no torch."""
