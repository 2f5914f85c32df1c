"""The method registry: one file per method, one line each here."""

from methods import full, ia3, lora, p_tuning, prefix_tuning, prompt_tuning, qlora
from methods.base import Method

METHODS: dict[str, Method] = {
    m.METHOD.id: m.METHOD
    for m in (full, lora, qlora, prefix_tuning, prompt_tuning, p_tuning, ia3)
}

__all__ = ["METHODS", "Method"]
