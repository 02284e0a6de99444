"""YAML that cannot blow up: `safe_load` is yaml.safe_load bounded in nesting depth and in the values
a document expands to through its aliases, so a few hundred bytes of config or `--set` text can
neither stand for billions of values (a "billion laughs") nor exhaust the stack; past a bound it
raises `TooLarge` (a ValueError) with a one-line message, before anything is constructed.
tflm.config reads every config file and override through it.
"""

import yaml

# The most a YAML config or --set value may nest, and the most values it may expand to.
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 100_000


class TooLarge(ValueError):
    """YAML nested deeper than MAX_YAML_DEPTH, or expanding to more than MAX_YAML_VALUES values."""


def safe_load(text):
    """yaml.safe_load, bounded: a TooLarge error instead of a value too deep or too large."""
    return _BoundedLoader(text).get_single_data()


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts nesting while it composes, and the values a document expands to
    (an alias counts as often as it is used) before it constructs anything."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise TooLarge(f"the YAML value is nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        expanded_size(node, {}, set())
        return super().construct_document(node)


def expanded_size(node, sizes, open_nodes):
    """How many values `node` stands for with its aliases expanded ({id: size} memoised, so a
    shared node is walked once); a TooLarge error past MAX_YAML_VALUES or for a recursive alias."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise TooLarge("the YAML value refers to itself (a recursive alias)")
    open_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = []
    size = 1 + sum(expanded_size(child, sizes, open_nodes) for child in children)
    if size > MAX_YAML_VALUES:
        raise TooLarge(f"the YAML value expands to more than {MAX_YAML_VALUES:,} values (through aliases)")
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size
