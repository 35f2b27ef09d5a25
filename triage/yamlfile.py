"""YAML as the content files are read: PyYAML's safe loader, except that a key written twice in one
mapping is an error instead of the later one silently winning (a concept or a message defined again
further down a long file would otherwise replace the first without a word). Kept out of the compiled
modules: it subclasses PyYAML's loader."""

from __future__ import annotations

from typing import IO, Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode


class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is written twice (first on line {first})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load(stream: str | IO[str]) -> Any:
    """One YAML document, like ``yaml.safe_load``, with every mapping's keys unique."""
    return yaml.load(stream, Loader=UniqueKeyLoader)  # noqa: S506 (a safe loader)
