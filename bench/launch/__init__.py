"""A suite's runs across processes and machines (runner, fork server, Ray, trackers); imports core, no torch."""
