"""Strict YAML reading: YAML 1.2 scalars (`1e-4` is a float), duplicate keys are errors, every node keeps its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError


class SuiteError(Exception):
    """Everything wrong with one suite file, each problem with its place."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.path} is not valid ({n} problem{'s' if n != 1 else ''}):"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(path, ["file not found"]) from None
    except UnicodeDecodeError as e:
        raise SuiteError(path, [f"not UTF-8 text (byte {e.start})"]) from None
    except OSError as e:
        raise SuiteError(path, [f"cannot read: {e.strerror}"]) from None
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        # ruamel explains duplicate keys over several lines with a link; the first sentence is the useful part.
        problem = (e.problem or e.context or "invalid YAML").split("\n")[0]
        raise SuiteError(path, [f"{where}{problem}"]) from None
    except YAMLError as e:
        raise SuiteError(path, [str(e).split("\n")[0]]) from None


def line_of(doc: Any, loc: tuple) -> int | None:
    """1-based line of the deepest node along `loc` that the YAML document knows about."""
    node, line = doc, None
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            break
    return line


def to_plain(node: Any) -> Any:
    """ruamel's commented containers to plain dicts and lists (what pydantic and JSON want)."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    for plain in (bool, int, float, str):  # ScalarFloat and friends subclass these
        if isinstance(node, plain):
            return plain(node)
    return node
