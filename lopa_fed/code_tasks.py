"""Code-generation tasks of the LoPA paper: CruxEval-O, CruxEval-I and MBPP.

Each task reads its JSONL file from the shared data directory (never copied into
the repository), turns every row into a :class:`CodeExample` (instruction prompt,
answer text, test program), splits the rows 50/50 into train and test (the
paper's protocol, seed 9876), turns raw model generations into answers
(:meth:`CodeTask.postprocess`) and builds the program that
:mod:`lopa_fed.sandbox` executes to score an answer (pass@1 by execution).

* **CruxEval-O** (output prediction): given ``f`` and its input, answer the
  returned value as a Python literal. Scored by ``assert f(<input>) == (<answer>)``.
* **CruxEval-I** (input prediction): given ``f`` and its output, answer an
  argument list. Scored by ``assert f(<answer>) == (<output>)``.
* **MBPP**: given the problem text and its three tests, answer the function.
  Scored by ``<answer>`` + ``test_setup_code`` + the ``test_list`` asserts.

Training uses causal-LM cross-entropy on the answer tokens only
(:func:`encode_answer_only`). This module imports neither torch nor flwr.

Data location: explicit ``data_dir`` > ``$LOPA_FED_DATA_DIR`` >
``<repo root>/../shared/data`` > ``<cwd>/../shared/data`` (the lookup of
:func:`lopa_fed.tasks.resolve_data_dir`).
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tasks import DataError, UnknownTaskError, resolve_data_dir

__all__ = [
    "CODE_TASKS",
    "COMPLETION_PLACEHOLDER",
    "CodeDataError",
    "CodeExample",
    "CodeTask",
    "chat_prompt",
    "encode_answer_only",
    "encode_prompt",
    "get_code_task",
]

#: Marker in :attr:`CodeExample.check` that :meth:`CodeTask.build_check` replaces by the answer.
COMPLETION_PLACEHOLDER = "__LOPA_COMPLETION__"

_FILES = {"cruxeval": "CruxEval/cruxeval.jsonl", "mbpp": "MBPP/mbpp.jsonl"}

#: End-of-turn / end-of-text markers of common chat models; always safe to stop at.
_SPECIAL_STOPS: tuple[str, ...] = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
    "<|im_start|>",
)
_MBPP_STOPS: tuple[str, ...] = ("\nassert ", "\nif __name__", "\nprint(", "\n# Test", "\n# test")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_CODE_START = re.compile(r"(?:async\s+def|def|class|import|from)\s|@")
_ENTRY = re.compile(
    r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\(\s*|set\(\s*|sorted\(\s*)?([A-Za-z_]\w*)\s*\("
)


class CodeDataError(DataError):
    """A code-task data file is missing or one of its rows is malformed.

    Subclass of :class:`lopa_fed.tasks.DataError` (hence of ``ValueError``); the
    message names the file and, for a bad row, its 1-based line number.
    """


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


def _cut(text: str, stops: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop sequence."""
    cut = len(text)
    for stop in stops:
        i = text.find(stop)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


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


@dataclass(frozen=True)
class CodeTask:
    """A code task: reading, splitting, post-processing and checking.

    Parameters
    ----------
    name : str
        ``"cruxeval-o"``, ``"cruxeval-i"`` or ``"mbpp"``.
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in _TASK_NAMES:
            raise UnknownTaskError(f"unknown code task {self.name!r}; known: {', '.join(_TASK_NAMES)}")

    # ------------------------------------------------------------------ properties
    @property
    def is_cruxeval(self) -> bool:
        """Whether this is one of the CruxEval tasks."""
        return self.name.startswith("cruxeval")

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        """Strings at which generation can safely stop.

        They never cut off an answer that has not started yet (a leading
        markdown fence is fine), so they can be passed to ``generate`` as stop
        strings; :meth:`postprocess` applies them too.
        """
        return _SPECIAL_STOPS + (() if self.is_cruxeval else _MBPP_STOPS)

    # ------------------------------------------------------------------ reading
    def read(self, data_dir: str | os.PathLike[str] | None = None) -> list[CodeExample]:
        """Read every row of the task's JSONL file.

        Parameters
        ----------
        data_dir : str or PathLike, optional
            Directory holding ``CruxEval/`` and ``MBPP/``; see the module docstring.

        Returns
        -------
        list[CodeExample]
            In file order (800 for CruxEval, 974 for MBPP).

        Raises
        ------
        CodeDataError
            No data directory, missing file, malformed JSON or a row without the
            expected keys (the message names the file and line).
        """
        try:
            root = resolve_data_dir(data_dir)
        except DataError as exc:
            raise CodeDataError(str(exc)) from exc
        if root is None:
            raise CodeDataError(
                "no data directory found: pass data_dir, set $LOPA_FED_DATA_DIR, or place the data "
                "in <repo root>/../shared/data"
            )
        path = Path(root) / _FILES["cruxeval" if self.is_cruxeval else "mbpp"]
        if not path.is_file():
            raise CodeDataError(f"{path}: data file for task {self.name!r} not found")
        out = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CodeDataError(f"{path}:{lineno}: malformed JSON row: {exc}") from exc
                if not isinstance(row, dict):
                    raise CodeDataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                try:
                    out.append(self._example(row))
                except (KeyError, TypeError, ValueError) as exc:
                    raise CodeDataError(f"{path}:{lineno}: malformed row: {exc}") from exc
        return out

    def _example(self, row: dict[str, Any]) -> CodeExample:
        if self.is_cruxeval:
            code, inp, outp, rid = (_field(row, k, str) for k in ("code", "input", "output", "id"))
            code = _normalize_code(code)
            if COMPLETION_PLACEHOLDER in code + inp + outp:
                raise ValueError(f"row contains the reserved marker {COMPLETION_PLACEHOLDER}")
            fence = f"```python\n{code}\n```"
            if self.name == "cruxeval-o":
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

    # ------------------------------------------------------------------ split
    def split(
        self, examples: Sequence[CodeExample], seed: int = 9876
    ) -> tuple[list[CodeExample], list[CodeExample]]:
        """Split 50/50 into train and test, as in the paper.

        Parameters
        ----------
        examples : Sequence[CodeExample]
            Usually :meth:`read`'s output.
        seed : int
            Seed of the permutation (paper: 9876).

        Returns
        -------
        tuple[list[CodeExample], list[CodeExample]]
            ``(train, test)``: disjoint, covering all examples, each in input
            order; ``train`` has ``len // 2`` examples.  The permutation depends
            only on ``len(examples)`` and ``seed``, so CruxEval-I and -O share
            the same split.
        """
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        n_train = len(order) // 2
        train_idx, test_idx = sorted(order[:n_train]), sorted(order[n_train:])
        return [examples[i] for i in train_idx], [examples[i] for i in test_idx]

    # ------------------------------------------------------------------ scoring
    def build_check(self, ex: CodeExample, completion: str) -> str:
        """Full Python program that passes iff ``completion`` is a correct answer.

        Parameters
        ----------
        ex : CodeExample
            The example (its :attr:`~CodeExample.check` template is filled in).
        completion : str
            A post-processed answer: a literal (CruxEval-O), an argument list
            (CruxEval-I) or function source (MBPP).

        Returns
        -------
        str
            CruxEval-O: ``code`` + ``assert f(<input>) == (<completion>)``;
            CruxEval-I: ``code`` + ``assert f(<completion>) == (<output>)``;
            MBPP: ``<completion>`` + setup code + the test asserts.  A CruxEval
            answer that is not a single literal (O) or a plain argument list
            (I), e.g. ``1) or (True``, yields a program that raises
            ``ValueError`` (scored as an error) instead of being spliced in.
        """
        if ex.check.count(COMPLETION_PLACEHOLDER) != 1:
            raise ValueError(f"{ex.uid}: check template must contain {COMPLETION_PLACEHOLDER} once")
        if self.is_cruxeval:
            answer = completion.strip()
            ok = _is_literal(answer) if self.name == "cruxeval-o" else _is_call_args(answer)
            if not ok:
                kind = "a single Python literal" if self.name == "cruxeval-o" else "an argument list for f"
                return f"raise ValueError({f'answer is not {kind}: {answer[:200]!r}'!r})\n"
            if "\n" in answer or "#" in answer:
                answer = f"\n{answer}\n"  # a trailing comment must not swallow the closing paren
        else:
            answer = completion
        return ex.check.replace(COMPLETION_PLACEHOLDER, answer, 1)

    def postprocess(self, generation: str) -> str:
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
        generation : str
            Decoded model output (without the prompt).

        Returns
        -------
        str
            The answer to pass to :meth:`build_check`.
        """
        text = generation.replace("\r\n", "\n")
        text = _unfence(_cut(text, _SPECIAL_STOPS))
        text = _cut(text, self.stop_sequences)
        if not self.is_cruxeval:
            return _clean_code(text)
        whole = self._answer_from(text.strip())
        if whole is not None:
            return whole
        for span in _INLINE_CODE.findall(text):  # prose like "returns `[1, 2]`."
            found = self._answer_from(span.strip())
            if found is not None:
                return found
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        for line in lines:
            found = self._answer_from(line)
            if found is not None:
                return found
        return lines[0] if lines else ""

    def _valid(self, answer: str) -> bool:
        return _is_literal(answer) if self.name == "cruxeval-o" else _is_call_args(answer)

    def _answer_from(self, snippet: str) -> str | None:
        """A valid CruxEval answer contained in ``snippet``, or None."""
        if not snippet:
            return None
        candidates = [snippet, snippet.rstrip(".;").rstrip()]
        for sep in (": ", " is ", "="):
            if sep in snippet:
                candidates.append(snippet.rsplit(sep, 1)[1].strip().rstrip(".;").strip())
        for cand in candidates:
            unwrapped = self._unwrap(cand)
            if unwrapped is not None and self._valid(unwrapped):
                return unwrapped
            if cand and self._valid(cand):
                return cand
        return None

    def _unwrap(self, snippet: str) -> str | None:
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
        if self.name == "cruxeval-o":
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


def _field(row: dict[str, Any], key: str, typ: type) -> Any:
    if key not in row:
        raise KeyError(f"missing key {key!r}")
    value = row[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise TypeError(f"key {key!r} should be {typ.__name__}, got {type(value).__name__}")
    return value


_TASK_NAMES: tuple[str, ...] = ("cruxeval-o", "cruxeval-i", "mbpp")

#: The code tasks by name.
CODE_TASKS: dict[str, CodeTask] = {name: CodeTask(name) for name in _TASK_NAMES}


def is_code_task(name: str) -> bool:
    """Whether ``name`` names a code task (case-insensitive; ``_`` and ``-`` are equivalent)."""
    return str(name).strip().lower().replace("_", "-") in CODE_TASKS


def get_code_task(name: str) -> CodeTask:
    """Look a code task up by name (case-insensitive; ``_`` and ``-`` are equivalent).

    Parameters
    ----------
    name : str
        ``"cruxeval-o"``, ``"cruxeval-i"`` or ``"mbpp"``.

    Returns
    -------
    CodeTask

    Raises
    ------
    lopa_fed.tasks.UnknownTaskError
        (a ``KeyError``) Unknown name; the message lists the known names.
    """
    key = name.strip().lower().replace("_", "-")
    if not is_code_task(key):
        raise UnknownTaskError(f"unknown code task {name!r}; known: {', '.join(CODE_TASKS)}")
    return CODE_TASKS[key]


# ---------------------------------------------------------------------------------- tokenization
def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """Wrap ``prompt`` as a user turn with the tokenizer's chat template.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Any object with ``chat_template`` / ``apply_chat_template``.
    prompt : str
        The instruction text (:attr:`CodeExample.prompt`).

    Returns
    -------
    str
        The templated text ending with the assistant generation prompt, or
        ``prompt + "\\n"`` when the tokenizer has no chat template.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def _ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def encode_answer_only(
    tokenizer: Any, prompt_text: str, target: str, max_length: int = 512
) -> dict[str, list[int]]:
    """Tokenize ``prompt_text + target + eos`` with loss on the answer only.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Must define ``eos_token_id``.
    prompt_text : str
        The full prompt as the model sees it (e.g. :func:`chat_prompt` output).
        A BOS token is prepended only if the tokenizer says it adds one
        (``add_bos_token``) and the text does not already start with it.
    target : str
        The answer (:attr:`CodeExample.target`).
    max_length : int
        Maximum total length; the prompt is truncated from the left (keeping
        the leading BOS of tokenizers that add one), never the answer.

    Returns
    -------
    dict
        ``input_ids`` and ``labels`` (same length): labels are -100 on every
        prompt token and equal ``input_ids`` on the answer tokens and the
        final eos token.

    Raises
    ------
    ValueError
        No eos token, or the answer (+ eos) leaves no room for a prompt token
        within ``max_length``.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id")
    prompt_ids = _ids(tokenizer, prompt_text)
    bos = getattr(tokenizer, "bos_token_id", None)
    uses_bos = bool(getattr(tokenizer, "add_bos_token", False)) and bos is not None
    if uses_bos and prompt_ids[:1] != [bos]:
        prompt_ids = [int(bos)] + prompt_ids
    answer_ids = _ids(tokenizer, target) + [int(eos)]
    room = max_length - len(answer_ids)
    if room < 1:
        raise ValueError(
            f"answer is {len(answer_ids)} tokens with eos; max_length={max_length} leaves no room for the prompt"
        )
    if len(prompt_ids) > room:
        keep_bos = uses_bos and prompt_ids[0] == bos and room > 1
        prompt_ids = ([prompt_ids[0]] + prompt_ids[-(room - 1) :]) if keep_bos else prompt_ids[-room:]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [-100] * len(prompt_ids) + list(answer_ids),
    }


def encode_prompt(tokenizer: Any, prompt_text: str, max_length: int = 512) -> list[int]:
    """Token ids of a prompt for generation, tokenized as in :func:`encode_answer_only`.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        The frozen model's tokenizer.
    prompt_text : str
        The full prompt as the model sees it (e.g. :func:`chat_prompt` output).
    max_length : int
        Maximum number of prompt tokens; longer prompts are truncated from the
        left, keeping the leading BOS of tokenizers that add one.

    Returns
    -------
    list[int]
        Exactly the prompt part (labels ``-100``) that :func:`encode_answer_only`
        produces for the same text when nothing is truncated, so the model sees
        at test time what it was trained on.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    prompt_ids = _ids(tokenizer, prompt_text)
    bos = getattr(tokenizer, "bos_token_id", None)
    uses_bos = bool(getattr(tokenizer, "add_bos_token", False)) and bos is not None
    if uses_bos and prompt_ids[:1] != [bos]:
        prompt_ids = [int(bos)] + prompt_ids
    if len(prompt_ids) > max_length:
        keep_bos = uses_bos and prompt_ids[0] == bos and max_length > 1
        prompt_ids = ([prompt_ids[0]] + prompt_ids[-(max_length - 1) :]) if keep_bos else prompt_ids[-max_length:]
    return prompt_ids
