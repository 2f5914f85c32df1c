"""peft-bench: train every PEFT method on the same data under the same budget, measure, compare, choose."""

__version__ = "0.1.0"
