"""Strict YAML reading: YAML 1.2 scalars (`1e-4` is a float), duplicate keys are errors, every node keeps its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

# Aliases let a few lines expand to billions of nodes ("billion laughs"); no real suite comes near this.
MAX_NODES = 100_000


class _Constructor(RoundTripConstructor):
    """Dates stay text: no suite field is a date, and ruamel raises a bare ValueError on `2023-13-45`."""


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_str)


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
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        # ruamel explains duplicate keys over several lines with a link; the first sentence is the useful part.
        problem = (e.problem or e.context or "invalid YAML").split("\n")[0]
        raise SuiteError(path, [f"{where}{problem}"]) from None
    except YAMLError as e:
        raise SuiteError(path, [str(e).split("\n")[0]]) from None
    if _expanded_size(doc) > MAX_NODES:
        raise SuiteError(path, [f"the YAML expands to more than {MAX_NODES:,} values through aliases; write it out"])
    return doc


def _expanded_size(doc: Any) -> int:
    """Nodes once aliases are expanded (what to_plain builds), counting stops just past MAX_NODES."""
    count, stack = 0, [doc]
    while stack and count <= MAX_NODES:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


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


class Lines:
    """Where each place of a YAML document is: a place (keys and indices from the top, as pydantic writes them)
    to its 1-based line, built once from the document; checks of the typed suite ask it for their messages."""

    def __init__(self, doc: Any):
        self._lines: dict[tuple, int | None] = {}
        self._mappings: set[tuple] = set()
        stack = [(doc, ())]
        while stack:
            node, loc = stack.pop()
            if isinstance(node, CommentedMap):
                self._mappings.add(loc)
                items = [((str(k),), _line(node.lc.key, k), v) for k, v in node.items()]
            elif isinstance(node, CommentedSeq):
                items = [((i,), _line(node.lc.item, i), v) for i, v in enumerate(node)]
            else:
                continue
            for key, line, value in items:
                # A node built by a tag (!!python/...) keeps no positions: its parent's line stands for it.
                self._lines[loc + key] = line if line is not None else self._lines.get(loc)
                stack.append((value, loc + key))

    def has(self, loc: tuple) -> bool:
        """Whether the document has this place."""
        return tuple(loc) in self._lines

    def mapping(self, loc: tuple) -> bool:
        """Whether the node at this place is a mapping."""
        return tuple(loc) in self._mappings

    def of(self, loc: tuple) -> int | None:
        """The line of the deepest place along `loc` that the document has (None: not even its first key)."""
        loc = tuple(loc)
        for n in range(len(loc), 0, -1):
            if loc[:n] in self._lines:
                return self._lines[loc[:n]]
        return None


def _line(position, key: Any) -> int | None:
    """The 1-based line of a ruamel node's position (lc.key or lc.item), None where the node kept none."""
    try:
        pos = position(key)
    except (KeyError, IndexError, TypeError):
        return None
    return pos[0] + 1 if pos else None


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
