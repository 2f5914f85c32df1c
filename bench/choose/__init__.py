"""Choosing: plan, memory prediction, recommend, compare (the gate), baselines; imports core, analysis, run, spec."""
