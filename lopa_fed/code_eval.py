"""Code tasks on a causal LM: datasets for training and execution-based pass@1.

* :func:`encode_code_examples` / :func:`code_splits` build
  :class:`~lopa_fed.data.EncodedDataset` s whose items carry ``lm_labels`` (the
  answer-token LM loss of :meth:`PromptedModel.forward`); the chat-templated
  prompt is what the frozen model reads, the raw prompt alone is what the
  instance encoder reads. :func:`lopa_fed.train.fit` trains on them unchanged,
  centralized or inside a Flower client.
* :func:`evaluate_loss` is the cheap metric (mean answer-token cross-entropy).
* :func:`evaluate_pass_at_1` generates an answer per problem
  (:mod:`lopa_fed.generate`), post-processes it, runs the task's check program
  in the sandbox (:mod:`lopa_fed.sandbox`) and reports pass@1 with one record
  per problem.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from .backbone import FrozenModel
from .code_tasks import CodeExample, CodeTask, chat_prompt, encode_answer_only, encode_prompt, get_code_task
from .data import EncodedDataset, Item
from .generate import GenerationConfig, generate
from .model import PromptedModel
from .sandbox import Limits, pass_at_1, run_many

__all__ = [
    "CODE_LIMITS",
    "CodeSplits",
    "code_splits",
    "default_generation",
    "encode_code_examples",
    "evaluate_loss",
    "evaluate_pass_at_1",
]

#: Sandbox limits used for scoring: 10 s wall clock (generous, the machine may be
#: busy), 5 s CPU, 512 MiB address space, 16 tasks, 10 MiB files.
CODE_LIMITS = Limits(timeout_s=10.0, memory_mb=512, cpu_s=5, max_procs=16, max_file_mb=10)

#: Default ``max_new_tokens`` per task: CruxEval answers are short literals
#: (99th percentile ≈ 40 SmolLM2 tokens), MBPP answers are functions (90th ≈ 125).
MAX_NEW_TOKENS = {"cruxeval-o": 64, "cruxeval-i": 64, "mbpp": 256}


def default_generation(task: CodeTask | str, **overrides: Any) -> GenerationConfig:
    """Greedy decoding with the task's stop sequences and token budget.

    Parameters
    ----------
    task : CodeTask or str
        The code task.
    **overrides
        Any :class:`~lopa_fed.generate.GenerationConfig` field (e.g.
        ``max_new_tokens=32``, ``do_sample=True, temperature=0.2, top_p=0.95``).

    Returns
    -------
    GenerationConfig
    """
    task = get_code_task(task) if isinstance(task, str) else task
    kw: dict[str, Any] = {"max_new_tokens": MAX_NEW_TOKENS[task.name], "stop": task.stop_sequences}
    kw.update(overrides)
    return GenerationConfig(**kw)


def encode_code_examples(
    examples: Sequence[CodeExample], frozen: FrozenModel, max_length: int = 512
) -> EncodedDataset:
    """Tokenize code examples for the answer-token LM loss.

    Parameters
    ----------
    examples : sequence of CodeExample
        From :meth:`CodeTask.read` / :meth:`CodeTask.split`.
    frozen : FrozenModel
        A ``causal`` frozen model; its tokenizer's chat template wraps the prompt.
    max_length : int
        Token limit of prompt + answer + eos; the prompt is truncated from the
        left, never the answer (an example whose answer alone does not fit is an
        error).

    Returns
    -------
    EncodedDataset
        One :class:`~lopa_fed.data.Item` per example: ``input_ids`` = chat prompt
        + answer + eos (length ``L_i``), ``lm_labels`` of the same length with
        ``-100`` on the prompt, ``enc_text = (prompt, None)`` (the instance
        encoder sees only the prompt), ``uid`` the example's uid, ``label`` 0.
        ``task`` is ``None`` (GLUE metrics do not apply).
    """
    if frozen.kind != "causal":
        raise ValueError(f"code tasks need a causal frozen model, got kind {frozen.kind!r}")
    tok = frozen.tokenizer
    items = []
    for ex in examples:
        try:
            enc = encode_answer_only(tok, chat_prompt(tok, ex.prompt), ex.target, max_length)
        except ValueError as exc:
            raise ValueError(f"{ex.uid}: {exc}; raise max_length") from exc
        items.append(Item(tuple(enc["input_ids"]), 0, (ex.prompt, None), -1, ex.uid, tuple(enc["labels"])))
    return EncodedDataset(items, tok.pad_token_id, None)


@dataclass
class CodeSplits:
    """Train and test data of a code task, encoded and raw (same order).

    Attributes
    ----------
    train, test : EncodedDataset
        Items with ``lm_labels`` (see :func:`encode_code_examples`).
    train_examples, test_examples : list of CodeExample
        ``train_examples[i]`` is the example of ``train[i]`` (likewise for
        test); pass these to :func:`evaluate_pass_at_1`.
    task : CodeTask
    """

    train: EncodedDataset
    test: EncodedDataset
    train_examples: list[CodeExample] = field(default_factory=list)
    test_examples: list[CodeExample] = field(default_factory=list)
    task: CodeTask | None = None

    def partition(
        self, indices: Sequence[int], which: str = "train"
    ) -> tuple[EncodedDataset, list[CodeExample]]:
        """The items and examples at ``indices`` of ``which`` (``"train"`` or ``"test"``)."""
        data, exs = (self.train, self.train_examples) if which == "train" else (self.test, self.test_examples)
        return data.subset(indices), [exs[i] for i in indices]


def code_splits(
    task_name: str,
    frozen: FrozenModel,
    data_dir: str | None = None,
    seed: int = 9876,
    max_length: int = 512,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> CodeSplits:
    """Read a code task, split it 50/50 (the paper's protocol) and encode both halves.

    Parameters
    ----------
    task_name : str
        ``"cruxeval-o"``, ``"cruxeval-i"`` or ``"mbpp"``.
    frozen : FrozenModel
        ``causal`` frozen model whose tokenizer is used.
    data_dir : str, optional
        See :func:`lopa_fed.tasks.resolve_data_dir`.
    seed : int
        Seed of the 50/50 split and of the ``train_limit`` subset.
    max_length : int
        Token limit per example (see :func:`encode_code_examples`).
    train_limit : int, optional
        Keep a seeded random subset of this many training problems.
    test_limit : int, optional
        Keep the first this many test problems (file order).

    Returns
    -------
    CodeSplits
        For federation, partition ``train_examples`` / ``train`` across clients
        (``splits.partition(indices)``); every client can score pass@1 on its
        share of ``test_examples`` or on the whole test half.
    """
    task = get_code_task(task_name)
    train_ex, test_ex = task.split(task.read(data_dir), seed=seed)
    if train_limit is not None and train_limit < len(train_ex):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(train_ex), generator=g)[:train_limit].sort().values.tolist()
        train_ex = [train_ex[i] for i in idx]
    if test_limit is not None:
        test_ex = test_ex[:test_limit]
    return CodeSplits(
        encode_code_examples(train_ex, frozen, max_length),
        encode_code_examples(test_ex, frozen, max_length),
        train_ex,
        test_ex,
        task,
    )


@torch.no_grad()
def evaluate_loss(model: PromptedModel, data: EncodedDataset, batch_size: int = 16) -> dict[str, float | int]:
    """Mean answer-token cross-entropy over ``data`` (items with ``lm_labels``).

    Parameters
    ----------
    model : PromptedModel
        Causal-kind model.
    data : EncodedDataset
        From :func:`encode_code_examples`.
    batch_size : int
        Evaluation batch size.

    Returns
    -------
    dict
        ``loss`` (per answer token, averaged over all tokens of ``data``),
        ``answer_tokens`` and ``num_examples``.
    """
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.eval()
    total, tokens = 0.0, 0
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=data.collate):
        out = model(batch)
        n = int((batch["lm_labels"] != -100).sum())  # a prompt token always precedes the answer
        total += float(out.loss) * n
        tokens += n
    return {"loss": total / max(tokens, 1), "answer_tokens": tokens, "num_examples": len(data)}


@torch.no_grad()
def evaluate_pass_at_1(
    model: PromptedModel | FrozenModel,
    task: CodeTask | str,
    examples: Sequence[CodeExample],
    limit: int | None = None,
    generation: GenerationConfig | None = None,
    workers: int | None = None,
    *,
    batch_size: int = 8,
    max_prompt_length: int = 512,
    limits: Limits = CODE_LIMITS,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate one answer per problem, run its check in the sandbox, report pass@1.

    Parameters
    ----------
    model : PromptedModel or FrozenModel
        A prompted causal model (its prompt generator makes ``Z: B×T×d`` from the
        raw prompts), or a bare ``FrozenModel`` for the no-tuning baseline.
    task : CodeTask or str
        The code task (prompts, stop sequences, post-processing, checks).
    examples : sequence of CodeExample
        Problems to score (e.g. ``CodeSplits.test_examples``).
    limit : int, optional
        Score only the first ``limit`` problems.
    generation : GenerationConfig, optional
        Decoding; default :func:`default_generation` (greedy). Stop sequences
        of the task are always added.
    workers : int, optional
        Parallel sandboxed programs (default: CPU count).
    batch_size : int
        Prompts generated together (prompts are sorted by length to limit padding).
    max_prompt_length : int
        Prompts are left-truncated to this many tokens.
    limits : Limits
        Sandbox limits per program.
    progress : bool
        Show a progress bar over generation batches.

    Returns
    -------
    dict
        ``pass_at_1`` (in [0, 1]), ``num_problems``, ``status_counts``
        (pass/fail/timeout/error), ``generation_seconds``, ``execution_seconds``,
        ``generation`` (the config as a dict) and ``records``: one dict per
        problem in input order with ``uid``, ``completion`` (post-processed
        answer), ``generation`` (raw text), ``status``, ``reason`` and ``seconds``.
    """
    task = get_code_task(task) if isinstance(task, str) else task
    examples = list(examples)[:limit] if limit is not None else list(examples)
    if not examples:
        raise ValueError("no problems to evaluate")
    cfg = generation or default_generation(task)
    stops = tuple(dict.fromkeys(tuple(cfg.stop) + task.stop_sequences))
    cfg = GenerationConfig(**{**cfg.__dict__, "stop": stops})
    frozen = model.frozen if isinstance(model, PromptedModel) else model
    if isinstance(model, PromptedModel):
        model.eval()
    tok = frozen.tokenizer
    prompt_ids = [encode_prompt(tok, chat_prompt(tok, ex.prompt), max_prompt_length) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -len(prompt_ids[i]))
    texts: list[str] = [""] * len(examples)
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.do_sample else None
    t0 = time.perf_counter()
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    from .train import _progress

    done = 0
    with _progress(progress) as bar:
        bar_task = bar.add_task(f"{task.name} generate", total=len(examples), loss=float("nan"), eps=0.0)
        for idx in batches:
            z = None
            if isinstance(model, PromptedModel):
                z = model.prompts([(examples[i].prompt, None) for i in idx], len(idx))
            outs = generate(frozen, [prompt_ids[i] for i in idx], z, cfg, gen)
            for i, text in zip(idx, outs):
                texts[i] = text
            done += len(idx)
            bar.update(bar_task, advance=len(idx), eps=done / max(time.perf_counter() - t0, 1e-9))
    gen_s = time.perf_counter() - t0
    completions = [task.postprocess(t) for t in texts]
    programs = [task.build_check(ex, c) for ex, c in zip(examples, completions)]
    t1 = time.perf_counter()
    results = run_many(programs, limits, workers)
    exec_s = time.perf_counter() - t1
    records = [
        {
            "uid": ex.uid,
            "completion": c,
            "generation": t,
            "status": r.status,
            "reason": r.reason,
            "seconds": round(r.seconds, 3),
        }
        for ex, c, t, r in zip(examples, completions, texts, results)
    ]
    counts = Counter(r.status for r in results)
    return {
        "pass_at_1": pass_at_1(results),
        "num_problems": len(examples),
        "status_counts": {s: counts.get(s, 0) for s in ("pass", "fail", "timeout", "error")},
        "generation_seconds": gen_s,
        "execution_seconds": exec_s,
        "generation": {**cfg.__dict__, "stop": list(cfg.stop)},
        "records": records,
    }
