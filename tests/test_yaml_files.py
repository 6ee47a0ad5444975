"""`yaml_files.py`: task and sweep files read safely, a key given twice refused, each problem one line naming
the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_bench.errors import UsageError
from medseg_bench.yaml_files import read_yaml_file


@pytest.mark.parametrize(("content", "message"), [
    (b"a: 1\na: 2\n", "not valid YAML (line 2, column 1: key 'a' given twice)"),
    (b"a: [1,\n", "not valid YAML (line 2, column 1: expected the node content, but found '<stream end>' "
                  "(while parsing a flow node))"),
    (b"a: \xff\n", "not UTF-8 text (invalid start byte at byte 3)"),
    (b"a: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML (line 1, column 4: could not "
                                                           "determine a constructor for the tag"),
    (b"task: T\n? [a, b]\n: c\n", "not valid YAML (line 2, column 3: a key must be text or a number, not a "
                                "list)"),  # a traceback (unhashable type: 'list')
    (b"{? {a: 1}: c}\n", "not valid YAML (line 1, column 4: a key must be text or a number, not a dict)"),
    (None, "cannot read sweep file (No such file or directory)"),
    # hostile files: a traceback (RecursionError); 10^9 values through aliases, which an error message
    # naming the value tried to print (gigabytes, without end)
    (b"epochs: " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "not valid YAML (nested too deeply)"),
    (b"epochs: [&a0 [x, x, x, x, x, x, x, x, x, x], "
     + b", ".join(b"&a%d [" % i + b", ".join([b"*a%d" % (i - 1)] * 10) + b"]" for i in range(1, 9))
     + b"]\n", "too many values for a sweep file: more than 100000 values (a task or sweep file holds tens: "
                "a list that long, or aliases that repeat a list or mapping?)"),
    # valid YAML, a list that long: it was "not valid YAML"
    (b"seed: [" + b",".join(b"%d" % i for i in range(100_001)) + b"]\n",
     "too many values for a sweep file: "),
])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path, content: bytes | None,
                                                          message: str) -> None:
    path = tmp_path / "sweep.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError) as error:
        read_yaml_file(path, "sweep file")
    assert str(error.value).startswith(f"{path}: {message}") and "\n" not in str(error.value)


def test_a_good_file_is_its_data(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("name: T\nlabels: {0: background, 1: organ}\n", encoding="utf-8")
    assert read_yaml_file(path, "task file") == {"name": "T", "labels": {0: "background", 1: "organ"}}
