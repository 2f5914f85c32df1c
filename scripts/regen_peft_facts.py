"""Write methods/peft_facts.json from PEFT as installed: what `bench list` and the serve column read of PEFT without
importing it (methods/catalog.py). Run after moving PEFT's pin: python scripts/regen_peft_facts.py"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from methods import catalog  # noqa: E402

if __name__ == "__main__":
    print(f"wrote {catalog.write()}")
