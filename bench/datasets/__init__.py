"""Instruction data: rows loaded, mapped and checked into examples, then batches; imports bench.core."""
