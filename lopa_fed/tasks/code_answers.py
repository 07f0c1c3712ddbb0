"""Turning raw code-model text into an answer the checks can run.

CruxEval answers are a Python literal (output prediction) or an argument list
(input prediction); MBPP answers are function source. :func:`extract_answer`
cuts chat markers and stop strings, unwraps markdown fences and common echoes
(``assert f(x) == y``, "The answer is y"), and keeps only what parses.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Sequence

from ..codegen.stops import cut_at_stops

__all__ = ["MBPP_STOPS", "SPECIAL_STOPS", "extract_answer", "valid_answer"]

#: End-of-turn / end-of-text markers of common chat models; always safe to stop at.
SPECIAL_STOPS: tuple[str, ...] = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
    "<|im_start|>",
)
MBPP_STOPS: tuple[str, ...] = ("\nassert ", "\nif __name__", "\nprint(", "\n# Test", "\n# test")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_CODE_START = re.compile(r"(?:async\s+def|def|class|import|from)\s|@")

def _unfence(text: str) -> str:
    """Content of the first markdown code block, or ``text`` if there is none."""
    m = _FENCE.search(text)
    if m is None:
        return text
    body = text[m.end() :]
    end = body.find("```")
    return body if end == -1 else body[:end]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _is_literal(expr: str) -> bool:
    try:
        ast.literal_eval(expr.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _is_call_args(args: str) -> bool:
    """Whether ``f(<args>)`` is exactly one call of ``f`` (no injected code around it)."""
    try:
        node = ast.parse(f"f({args}\n)", mode="eval").body
    except (SyntaxError, ValueError):
        return False
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "f"


def extract_answer(task_name: str, generation: str, stops: Sequence[str]) -> str:
    """Extract the answer from raw model text.

    Cuts at chat end markers, takes the first markdown code block if any,
    cuts at the task's stop sequences, then

    * CruxEval: returns the whole text if it is already a valid answer, else
      the first backtick-quoted inline span that is one, else
      the first line that is one after unwrapping ``assert f(...) == X`` /
      ``f(...) == X`` / ``f(X)`` echoes and ``"... is X"`` / ``"...: X"``
      prose; falls back to the first non-empty line;
    * MBPP: returns the code, dropping leading prose and trailing lines that
      do not parse.

    Parameters
    ----------
    task_name : str
        ``cruxeval-o``, ``cruxeval-i`` or ``mbpp``.
    generation : str
        Decoded model output (without the prompt).
    stops : sequence of str
        The task's stop sequences.

    Returns
    -------
    str
        The answer to pass to :meth:`build_check`.
    """
    text = generation.replace("\r\n", "\n")
    text = _unfence(cut_at_stops(text, SPECIAL_STOPS))
    text = cut_at_stops(text, stops)
    if not task_name.startswith("cruxeval"):
        return _clean_code(text)
    whole = _answer_from(task_name, text.strip())
    if whole is not None:
        return whole
    for span in _INLINE_CODE.findall(text):  # prose like "returns `[1, 2]`."
        found = _answer_from(task_name, span.strip())
        if found is not None:
            return found
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    for line in lines:
        found = _answer_from(task_name, line)
        if found is not None:
            return found
    return lines[0] if lines else ""

def valid_answer(task_name: str, answer: str) -> bool:
    """Whether ``answer`` is a literal (CruxEval-O) or a plain argument list for ``f`` (CruxEval-I)."""
    return _is_literal(answer) if task_name == "cruxeval-o" else _is_call_args(answer)

def _answer_from(task_name: str, snippet: str) -> str | None:
    """A valid CruxEval answer contained in ``snippet``, or None."""
    if not snippet:
        return None
    candidates = [snippet, snippet.rstrip(".;").rstrip()]
    for sep in (": ", " is ", "="):
        if sep in snippet:
            candidates.append(snippet.rsplit(sep, 1)[1].strip().rstrip(".;").strip())
    for cand in candidates:
        unwrapped = _unwrap(task_name, cand)
        if unwrapped is not None and valid_answer(task_name, unwrapped):
            return unwrapped
        if cand and valid_answer(task_name, cand):
            return cand
    return None

def _unwrap(task_name: str, snippet: str) -> str | None:
    """Strip ``assert f(a) == b`` / ``f(a) == b`` / ``f(a)`` echoes; None if not one."""
    src = snippet[len("assert") :].strip() if snippet.startswith("assert ") else snippet
    try:
        node = ast.parse(src, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    call, value = node, None
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
        call, value = node.left, node.comparators[0]
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
        return None
    if task_name == "cruxeval-o":
        return None if value is None else ast.get_source_segment(src, value)
    seg = ast.get_source_segment(src, call) or ""
    start, end = seg.find("(", 1), seg.rfind(")")
    return seg[start + 1 : end].strip() if 0 < start < end else None


def _clean_code(text: str) -> str:
    """Trim MBPP generations to parseable code (best-effort)."""
    code = textwrap.dedent(text).strip("\n")
    if _parses(code):
        return code.rstrip()
    lines = code.split("\n")
    start = next((i for i, ln in enumerate(lines) if _CODE_START.match(ln)), 0)
    lines = lines[start:]
    for end in range(len(lines), 0, -1):
        cand = "\n".join(lines[:end]).rstrip()
        if cand and _parses(cand):
            return cand
    return "\n".join(lines).strip("\n")
