"""Code-generation tasks of the LoPA paper: CruxEval-O, CruxEval-I and MBPP.

Each task reads its JSONL file from the shared data directory (never copied into
the repository), turns every row into a :class:`CodeExample` (instruction prompt,
answer text, test program), splits the rows 50/50 into train and test (the
paper's protocol, seed 9876; ``read("train")`` and ``read("dev")`` return the two
halves), turns raw model generations into answers
(:func:`~lopa_fed.tasks.code_answers.extract_answer`) and builds the program that
:mod:`lopa_fed.codegen.sandbox` executes to score an answer (pass@1 by execution).

* **CruxEval-O** (output prediction): given ``f`` and its input, answer the
  returned value as a Python literal. Scored by ``assert f(<input>) == (<answer>)``.
* **CruxEval-I** (input prediction): given ``f`` and its output, answer an
  argument list. Scored by ``assert f(<answer>) == (<output>)``.
* **MBPP**: given the problem text and its three tests, answer the function.
  Scored by ``<answer>`` + ``test_setup_code`` + the ``test_list`` asserts.

Training uses causal-LM cross-entropy on the answer tokens only
(:func:`~lopa_fed.codegen.prompting.encode_answer_only`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError, UnknownTaskError
from .base import TaskDefaults, check_split
from .code_answers import MBPP_STOPS, SPECIAL_STOPS, _is_call_args, _is_literal, extract_answer
from .code_rows import COMPLETION_PLACEHOLDER, CodeExample, example_from_row
from .files import resolve_data_dir

if TYPE_CHECKING:  # pragma: no cover
    from ..backbone import FrozenModel
    from ..data import EncodedDataset

__all__ = ["CODE_DEFAULTS", "CODE_TASKS", "COMPLETION_PLACEHOLDER", "CodeDataError", "CodeExample", "CodeTask"]

#: The paper's code-task learning rates (LOPA.md, "Training settings").
CODE_LR = {"pt": 1e-3, "idpg": 1e-3, "lopa": 1e-3, "lora": 1e-4, "head": 1e-4}

#: The paper's code-task settings: SmolLM2 as the frozen causal LM here, r = 1, h' = the encoder width,
#: 5 epochs, lr 1e-3 (1e-4 for LoRA), 512 tokens, Zs ~ N(0, 1) (vocabulary rows did not help on
#: CruxEval-O: answer-token test loss 1.94 against 1.85, 64 problems × 16 steps, see README).
CODE_DEFAULTS = TaskDefaults(
    model="smollm2", kind="causal", r=1, hidden=None, epochs=5, max_length=512, val_fraction=0.0,
    max_new_tokens=64, lr=CODE_LR, metric="pass@1", paper_lr=CODE_LR, zs_init={},
)
#: Generation budget per task: CruxEval answers are short literals (99th percentile ≈ 40
#: SmolLM2 tokens), MBPP answers are functions (90th ≈ 125).
_MAX_NEW_TOKENS = {"cruxeval-o": 64, "cruxeval-i": 64, "mbpp": 256}

_FILES = {"cruxeval": "CruxEval/cruxeval.jsonl", "mbpp": "MBPP/mbpp.jsonl"}

class CodeDataError(DataError):
    """A code-task data file is missing or one of its rows is malformed.

    Subclass of :class:`lopa_fed.tasks.DataError` (hence of ``ValueError``); the
    message names the file and, for a bad row, its 1-based line number.
    """


@dataclass(frozen=True)
class CodeTask:
    """A code task: reading, splitting, post-processing and checking.

    Parameters
    ----------
    name : str
        ``"cruxeval-o"``, ``"cruxeval-i"`` or ``"mbpp"``.
    """

    name: str
    num_labels: int = 0
    label_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in _TASK_NAMES:
            raise UnknownTaskError(f"unknown code task {self.name!r}; known: {', '.join(_TASK_NAMES)}")

    @property
    def defaults(self) -> TaskDefaults:
        """:data:`CODE_DEFAULTS` with this task's generation budget."""
        from dataclasses import replace

        return replace(CODE_DEFAULTS, max_new_tokens=_MAX_NEW_TOKENS[self.name])

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
        return SPECIAL_STOPS + (() if self.is_cruxeval else MBPP_STOPS)

    # ------------------------------------------------------------------ reading
    def read(
        self,
        split: str,
        data_dir: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        seed: int = 9876,
    ) -> list[CodeExample]:
        """One half of the seeded 50/50 split: ``train``, or ``dev`` (the test half).

        Parameters
        ----------
        split : str
            ``"train"`` or ``"dev"`` (``"test"`` is accepted for ``"dev"``).
        data_dir : str or PathLike, optional
            Directory holding ``CruxEval/`` and ``MBPP/``.
        limit : int, optional
            Keep the first ``limit`` problems of the half.
        seed : int
            Seed of the split (paper: 9876).

        Returns
        -------
        list[CodeExample]
        """
        split = check_split(split)
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0 or None, got {limit}")
        train, test = self.split(self.read_all(data_dir), seed=seed)
        rows = train if split == "train" else test
        return rows if limit is None else rows[:limit]

    def read_all(self, data_dir: str | os.PathLike[str] | None = None) -> list[CodeExample]:
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
                    out.append(example_from_row(self.name, row))
                except (KeyError, TypeError, ValueError) as exc:
                    raise CodeDataError(f"{path}:{lineno}: malformed row: {exc}") from exc
        return out

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


    # ------------------------------------------------------------------ interface
    def encode(self, examples: Sequence[CodeExample], frozen: FrozenModel, max_length: int) -> EncodedDataset:
        """Answer-token LM data (:func:`~lopa_fed.codegen.prompting.encode_code_examples`), examples kept."""
        from ..codegen.prompting import encode_code_examples

        return encode_code_examples(examples, frozen, max_length, task=self)

    def evaluate(
        self,
        model,
        data: EncodedDataset,
        *,
        batch_size: int = 16,
        max_new_tokens: int = 0,
        generation: Any = None,
        max_prompt_length: int | None = None,
        progress: bool = False,
        gen_batch_size: int = 8,
        workers: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Answer-token ``loss`` and execution ``pass@1`` (= ``score``) of ``model`` on ``data``.

        Parameters
        ----------
        model : PromptedModel or FrozenModel
            A bare frozen model scores the no-tuning baseline.
        data : EncodedDataset
            From :meth:`encode` (it keeps the problems).
        batch_size : int
            Batch size of the loss pass.
        max_new_tokens : int
            Generation budget (0: the task's default).
        generation : GenerationConfig, optional
            Full decoding settings (overrides ``max_new_tokens``).
        max_prompt_length : int, optional
            Prompts are left-truncated to this many tokens (default: the task's max length).
        progress : bool
            Show a progress bar over generation.
        gen_batch_size : int
            Prompts generated together.
        workers : int, optional
            Sandboxed programs run in parallel (default: the CPU count).

        Returns
        -------
        dict
            ``score`` and ``pass@1`` (in [0, 1]), ``loss``, ``answer_tokens``, ``num_examples``,
            ``status_counts``, ``generation_seconds``, ``execution_seconds``, ``generation`` and
            ``records`` (one per problem).
        """
        from ..codegen.scoring import default_generation, evaluate_loss, evaluate_pass_at_1

        if not data.examples:
            raise DataError(f"{self.name}: nothing to evaluate (an empty split)")
        loss = evaluate_loss(model, data, batch_size) if hasattr(model, "prompts") else {}
        gen = generation or default_generation(self, max_new_tokens=max_new_tokens or self.defaults.max_new_tokens)
        res = evaluate_pass_at_1(
            model, self, data.examples, generation=gen, workers=workers, batch_size=gen_batch_size,
            max_prompt_length=max_prompt_length or self.defaults.max_length, progress=progress,
        )
        return {"score": res["pass_at_1"], "pass@1": res["pass_at_1"], **loss, **res,
                "num_examples": len(data.examples)}

    def label_of(self, example: CodeExample) -> None:
        """Code problems have no class label."""
        return None

    def check(self, method: str, kind: str) -> None:
        """Code tasks need a causal LM and have no classification head."""
        if method == "head":
            raise ConfigError(
                f"method: 'head' trains a classification head, which code task {self.name!r} does not have; "
                "use pt, idpg, lopa (or an ablation) or lora"
            )
        if kind not in ("auto", "causal"):
            raise ConfigError(f"code task {self.name!r} needs a causal LM (kind causal or auto), got kind {kind!r}")

    def postprocess(self, generation: str) -> str:
        """The answer in raw model text (:func:`~lopa_fed.tasks.code_answers.extract_answer`)."""
        return extract_answer(self.name, generation, self.stop_sequences)

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

_TASK_NAMES: tuple[str, ...] = ("cruxeval-o", "cruxeval-i", "mbpp")

#: The code tasks by name.
CODE_TASKS: dict[str, CodeTask] = {name: CodeTask(name) for name in _TASK_NAMES}
