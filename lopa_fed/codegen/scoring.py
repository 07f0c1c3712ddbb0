"""Scoring code models: the answer-token loss and execution-based pass@1.

* :func:`evaluate_loss` is the cheap metric (mean answer-token cross-entropy) on
  data from :func:`lopa_fed.codegen.prompting.encode_code_examples`.
* :func:`evaluate_pass_at_1` generates an answer per problem
  (:mod:`lopa_fed.codegen.generate`), post-processes it, runs the task's check
  program in the sandbox (:mod:`lopa_fed.codegen.sandbox`) and reports pass@1 with
  one record per problem.

Callers normally reach these through :meth:`lopa_fed.tasks.CodeTask.evaluate`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from ..backbone import FrozenModel
from ..data import EncodedDataset
from ..errors import DataError
from ..model import PromptedModel
from ..train import progress_bar
from .generate import GenerationConfig, generate
from .prompting import chat_prompt, encode_prompt
from .sandbox import Limits, pass_at_1, run_many

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.code import CodeExample, CodeTask

__all__ = ["CODE_LIMITS", "default_generation", "evaluate_loss", "evaluate_pass_at_1"]

#: Sandbox limits used for scoring: 10 s wall clock (generous, the machine may be
#: busy), 5 s CPU, 512 MiB address space, 16 tasks, 10 MiB files.
CODE_LIMITS = Limits(timeout_s=10.0, memory_mb=512, cpu_s=5, max_procs=16, max_file_mb=10)

def default_generation(task: CodeTask, **overrides: Any) -> GenerationConfig:
    """Greedy decoding with the task's stop sequences and token budget.

    Parameters
    ----------
    task : CodeTask
        The code task (its ``defaults.max_new_tokens`` and stop sequences).
    **overrides
        Any :class:`~lopa_fed.codegen.generate.GenerationConfig` field (e.g.
        ``max_new_tokens=32``, ``do_sample=True, temperature=0.2, top_p=0.95``).

    Returns
    -------
    GenerationConfig
    """
    kw: dict[str, Any] = {"max_new_tokens": task.defaults.max_new_tokens, "stop": task.stop_sequences}
    kw.update(overrides)
    return GenerationConfig(**kw)


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
        raise DataError("cannot evaluate on an empty dataset")
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
    task: CodeTask,
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
    task : CodeTask
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
    examples = list(examples)[:limit] if limit is not None else list(examples)
    if not examples:
        raise DataError("no problems to evaluate")
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
    done = 0
    with progress_bar(progress) as bar:
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
