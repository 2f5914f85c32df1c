"""Commands that tie the floors together (bench run, perf, gpu-check, import-peft); imports any floor."""
