"""Single-party ``fit`` and ``evaluate``.

The centralized CLI and the Flower ClientApp call these same functions. They take
a model, a dataset and a config, return plain metric dicts and write no files.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import TrainConfig
from .data import EncodedDataset
from .errors import DataError
from .model import PromptedModel


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def progress_bar(enabled: bool):
    """A rich progress bar with ``loss`` and ``eps`` (examples/s) fields; hidden unless ``enabled``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[eps]:.1f} ex/s"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )


def warmup_constant(step_total: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup over ``warmup_ratio·step_total`` steps, then constant 1."""
    warm = int(math.ceil(warmup_ratio * step_total))

    def fn(step: int) -> float:
        return min(1.0, (step + 1) / warm) if warm > 0 else 1.0

    return fn


def fit(
    model: PromptedModel,
    data: EncodedDataset,
    config: TrainConfig,
    *,
    progress: bool = False,
    description: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train ``model``'s trainable parameters on ``data``.

    AdamW (weight decay from config, 0 by default), linear warmup then constant LR,
    gradient-norm clipping, seeded shuffling. Stops after ``config.epochs`` epochs or
    ``config.max_steps`` optimiser steps, whichever comes first.

    Returns
    -------
    dict
        ``loss`` (mean over the last epoch), ``first_loss`` (mean of the first 10 % of
        steps), ``losses`` (per step), ``steps``, ``epochs``, ``num_examples`` (dataset size),
        ``examples_seen``, ``seconds``, ``examples_per_second``, ``lr``.
    """
    if len(data) == 0:
        raise ValueError("cannot fit on an empty dataset")
    set_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, collate_fn=data.collate, generator=g)
    steps_per_epoch = len(loader)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    lr = config.learning_rate(model.config.method)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_constant(total, config.warmup_ratio))
    model.train()
    losses: list[float] = []
    epoch_losses: list[float] = []
    seen = 0
    step = 0
    epochs_run = 0
    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=total, loss=float("nan"), eps=0.0)
        while step < total:
            epoch_losses = []
            epochs_run += 1
            for batch in loader:
                out = model(batch)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if config.grad_clip and config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                sched.step()
                val = float(out.loss.detach())
                if not math.isfinite(val):
                    raise FloatingPointError(f"training loss became {val} at step {step}; lower the learning rate")
                losses.append(val)
                epoch_losses.append(val)
                seen += batch["input_ids"].shape[0]
                step += 1
                if on_step is not None:
                    on_step(step, val)
                bar.update(task, advance=1, loss=val, eps=seen / max(time.perf_counter() - t0, 1e-9))
                if step >= total:
                    break
    model.eval()
    seconds = time.perf_counter() - t0
    head = max(1, len(losses) // 10)
    return {
        "loss": float(np.mean(epoch_losses)),
        "first_loss": float(np.mean(losses[:head])),
        "losses": losses,
        "steps": step,
        "epochs": epochs_run,
        "num_examples": len(data),
        "examples_seen": seen,
        "seconds": seconds,
        "examples_per_second": seen / max(seconds, 1e-9),
        "lr": lr,
    }


@torch.no_grad()
def predict(model: PromptedModel, data: EncodedDataset, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Predictions (N,) and mean loss over ``data`` in eval mode."""
    model.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=data.collate)
    preds: list[np.ndarray] = []
    total, n = 0.0, 0
    for batch in loader:
        out = model(batch)
        preds.append(out.preds.numpy())
        b = batch["input_ids"].shape[0]
        total += float(out.loss) * b
        n += b
    return (np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)), total / max(n, 1)


def evaluate(model: PromptedModel, data: EncodedDataset, batch_size: int = 64, **options) -> dict:
    """The task's metrics on ``data`` (:meth:`Task.evaluate <lopa_fed.tasks.Task.evaluate>`).

    Every task returns ``score`` (its headline metric), ``loss`` and ``num_examples``;
    ``options`` go to the task (e.g. ``max_new_tokens`` for code tasks). Data without a
    task are scored as classification (:func:`classification_metrics`).
    """
    if data.task is not None:
        return data.task.evaluate(model, data, batch_size=batch_size, **options)
    return classification_metrics(model, data, batch_size)


def classification_metrics(model: PromptedModel, data: EncodedDataset, batch_size: int = 64) -> dict:
    """``loss``, ``accuracy`` (+ ``f1`` / ``mcc`` by task), ``score`` and ``num_examples`` on labelled ``data``.

    ``score`` is the task's main metric (F1 for MRPC/QQP, MCC for CoLA, else accuracy).
    """
    if len(data) == 0:
        raise DataError("cannot evaluate on an empty dataset")
    preds, loss = predict(model, data, batch_size)
    labels = data.labels
    if data.task is not None:
        scores = data.task.score(preds.tolist(), labels)
        main = data.task.main_metric(scores)
    else:
        scores = {"accuracy": float(np.mean(preds == np.asarray(labels)))}
        main = scores["accuracy"]
    return {"loss": loss, **scores, "score": main, "num_examples": len(data)}
