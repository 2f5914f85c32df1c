"""The method registry: one file per method, one line each here."""

from methods import dora, full, head_only, ia3, loha, lora, oft, p_tuning, prefix_tuning, prompt_tuning, qlora, vera
from methods.base import Method

METHODS: dict[str, Method] = {
    m.METHOD.id: m.METHOD
    for m in (full, lora, qlora, prefix_tuning, prompt_tuning, p_tuning, ia3, head_only, dora, loha, vera, oft)
}

__all__ = ["METHODS", "Method"]
