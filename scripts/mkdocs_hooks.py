"""MkDocs hook (mkdocs.yml `hooks:`): adds the reference pages, generated from the code by scripts/gen_docs.py."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_docs  # noqa: E402  (a script beside this one, not a package)


def on_files(files: Files, config) -> Files:
    for path, text in gen_docs.reference_pages().items():
        files.append(File.generated(config, path, content=text))
    return files
