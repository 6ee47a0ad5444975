"""YAML as the project reads it (task files, sweep files): safe, and a key given twice is an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The most values (lists, mappings, their items and keys) a task or sweep file holds once its aliases are
# followed: each holds tens; ten nested lists of ten aliases each hold 10^10, which printing one in an error
# message (or checking it item by item) never finished.
MAX_VALUES = 100_000


def load_unique(text: str) -> Any:
    """`yaml.safe_load`, refusing a mapping that gives a key twice (YAML would keep the last, silently:
    a task file's `imaging: MRI` then `imaging: CT` would change its normalisation without a word), and a
    document of more than `MAX_VALUES` values, aliases followed ("billion laughs").
    Raises `yaml.YAMLError` (a `ConstructorError` naming the key and its line), or `TooManyValues`."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            seen: set[object] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, list | dict | set):  # `? [a, b]`: YAML allows it, Python keys cannot
                    raise yaml.constructor.ConstructorError(
                        None, None, f"a key must be text or a number, not a {type(key).__name__}",
                        key_node.start_mark)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    data = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader
    _check_size(data)
    return data


class TooManyValues(Exception):
    """A YAML document past `MAX_VALUES` values: valid YAML, but no task or sweep file."""


def _check_size(data: Any) -> None:
    """`TooManyValues` when `data` holds more than `MAX_VALUES` values, counting a list or mapping reached
    through several aliases each time (PyYAML shares it, so loading was quick; reading it was not)."""
    pending, seen = [data], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise TooManyValues(f"more than {MAX_VALUES} values (a task or sweep file holds tens: a list "
                                "that long, or aliases that repeat a list or mapping?)")
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item


def read_yaml_file(path: Path, kind: str) -> Any:
    """`path` read as `load_unique` reads it; `UsageError` naming the file for one that cannot be read
    (`kind`: "task file", "sweep file"), is not UTF-8 text, or is not valid YAML (where: `yaml_problem`)."""
    import yaml

    from medseg_bench.errors import UsageError

    try:
        return load_unique(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {kind} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    except TooManyValues as exc:  # it said "not valid YAML" of a long list
        raise UsageError(f"{path}: too many values for a {kind}: {exc}") from None
    except RecursionError:  # `[[[[...` past Python's recursion limit: PyYAML composes recursively
        raise UsageError(f"{path}: not valid YAML (nested too deeply)") from None


def yaml_problem(exc: BaseException) -> str:
    """One line for a YAML error, with where it is: "line 2, column 5: expected ',' or ']', but got ':'
    (while parsing a flow sequence)" (PyYAML's first line named no line: "while parsing a flow sequence")."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem or mark is None:
        from medseg_bench.errors import first_line

        return first_line(exc)
    context = getattr(exc, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")
