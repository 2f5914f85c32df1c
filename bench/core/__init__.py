"""The shared contract: run config, record, run folder, metric and score meanings, YAML, helpers; imports no bench."""
