"""How CruxEval and MBPP rows become :class:`CodeExample` s: the prompt, the answer and the check.

* **CruxEval-O**: ``code`` + ``assert f(<input>) == (<answer>)``;
* **CruxEval-I**: ``code`` + ``assert f(<answer>) == (<output>)``;
* **MBPP**: ``<answer>`` + ``test_setup_code`` + the ``test_list`` asserts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["COMPLETION_PLACEHOLDER", "CodeExample", "example_from_row"]

#: Marker in :attr:`CodeExample.check` that :meth:`CodeTask.build_check` replaces by the answer.
COMPLETION_PLACEHOLDER = "__LOPA_COMPLETION__"

_ENTRY = re.compile(
    r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\(\s*|set\(\s*|sorted\(\s*)?([A-Za-z_]\w*)\s*\("
)



@dataclass(frozen=True)
class CodeExample:
    """One code-task example.

    Attributes
    ----------
    uid : str
        Stable identifier, e.g. ``"cruxeval/sample_3"`` or ``"mbpp/11"``.
    prompt : str
        User-facing instruction text (also what the instance encoder sees).
    target : str
        The reference answer to train on and compare with.
    check : str
        Test program template: Python source containing
        :data:`COMPLETION_PLACEHOLDER` exactly once; use
        :meth:`CodeTask.build_check` to fill in a candidate answer.
    entry : str
        Name of the function under test (informational).
    """

    uid: str
    prompt: str
    target: str
    check: str
    entry: str = ""


def _normalize_code(code: str) -> str:
    """Unix newlines, no trailing whitespace on lines, no leading/trailing blank lines."""
    lines = code.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def example_from_row(task_name: str, row: dict[str, Any]) -> CodeExample:
    """The :class:`CodeExample` of one JSONL row of ``task_name`` (raises KeyError/TypeError/ValueError)."""
    if task_name.startswith("cruxeval"):
        code, inp, outp, rid = (_field(row, k, str) for k in ("code", "input", "output", "id"))
        code = _normalize_code(code)
        if COMPLETION_PLACEHOLDER in code + inp + outp:
            raise ValueError(f"row contains the reserved marker {COMPLETION_PLACEHOLDER}")
        fence = f"```python\n{code}\n```"
        if task_name == "cruxeval-o":
            prompt = (
                "Given the Python function below and its input, give the exact value the function "
                f"returns.\n\n{fence}\nInput: f({inp})\nAnswer with a Python literal only."
            )
            target = outp
            check = f"{code}\n\nassert f({inp}) == ({COMPLETION_PLACEHOLDER})\n"
        else:
            prompt = (
                "Given the Python function below and the value it returns, give an input for which "
                f"the function returns exactly this value.\n\n{fence}\nOutput: {outp}\n"
                "Answer only with the arguments to put inside f(...), as Python literals."
            )
            target = inp
            check = f"{code}\n\nassert f({COMPLETION_PLACEHOLDER}) == ({outp})\n"
        return CodeExample(f"cruxeval/{rid}", prompt, target, check, "f")
    text = _field(row, "text", str)
    code = _normalize_code(_field(row, "code", str))
    task_id = _field(row, "task_id", int)
    setup = _normalize_code(_field(row, "test_setup_code", str))
    tests = _field(row, "test_list", list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("'test_list' must be a non-empty list of strings")
    tests_src = "\n".join(_normalize_code(t) for t in tests)
    if COMPLETION_PLACEHOLDER in code + setup + tests_src:
        raise ValueError(f"row contains the reserved marker {COMPLETION_PLACEHOLDER}")
    m = _ENTRY.match(tests[0].strip())
    entry = m.group(1) if m else ""
    prompt = (
        f"{text.strip()}\nYour code should pass these tests:\n\n```python\n{tests_src}\n```\n"
        "Write only the Python function (with any imports or helpers it needs), "
        "without tests or explanations."
    )
    # The solution goes first: some setup code uses classes the solution defines (e.g. Node).
    parts = [COMPLETION_PLACEHOLDER] + ([setup] if setup else []) + [tests_src]
    check = "\n\n".join(parts) + "\n"
    return CodeExample(f"mbpp/{task_id}", prompt, code, check, entry)


def _field(row: dict[str, Any], key: str, typ: type) -> Any:
    if key not in row:
        raise KeyError(f"missing key {key!r}")
    value = row[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise TypeError(f"key {key!r} should be {typ.__name__}, got {type(value).__name__}")
    return value
