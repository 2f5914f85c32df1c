"""peft-bench: train every PEFT method on the same data under the same budget, measure, compare, choose."""

import logging

__version__ = "0.1.0"

# Installed (the quantization extra), torchao is imported by PEFT and transformers whatever a run uses, and logs at
# import that its CUDA kernels do not load on a machine without them; torch then warns of torchao's Enum
# registrations. Neither says anything about a run, and both would land on stderr above every command's own output.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# On a CPU with AVX512-BF16, bitsandbytes tries to fetch a 4-bit kernel from the Hub through the `kernels` package at
# import, and warns when it cannot: the harness never fetches code at run time (README: Security), so it never can.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
