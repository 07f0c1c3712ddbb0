"""Batched text generation from a frozen causal LM with a soft prefix ``Z``.

The prefix goes in through ``inputs_embeds`` once, on the first step, together
with the prompt; every later step feeds only the newly sampled token and reuses
the KV cache, so the prefix is never re-encoded. Rows are left-padded with the
prefix placed after the padding, exactly as :meth:`FrozenModel.forward` lays out
a causal batch (:meth:`FrozenModel.left_align`)::

    row i:  [pad … pad ; Z_i (T) ; x_i (L_i) ]  →  then one generated token per step
    mask :  [ 0  …  0  ;  1 … 1  ;  1 …  1   ]
    pos  :  [ 0  …  0  ;  0 … T-1; T … T+L_i-1]

Position ids count only attended positions (``cumsum(mask) - 1``), so a row's
logits do not depend on how much padding the batch gave it.

Decoding is greedy or nucleus sampling (temperature + top-p, as in the paper),
bounded by ``max_new_tokens``, stopped per row at an end-of-sequence token or at
any stop string. This module has no task knowledge; see :mod:`lopa_fed.codegen.scoring`
for pass@1 on the code tasks.

Why this loop and not transformers' ``generate``
------------------------------------------------
``model.generate(inputs_embeds=embeds, attention_mask=mask)`` (transformers 5.24) accepts
the same left-padded ``[pad ; Z ; x]`` embeddings and builds the same position ids from
the mask, and it is **exact**: token-for-token equal to this loop on SmolLM2-135M with a
soft prefix (m = 10) on 8 CruxEval-O prompts, greedy, at batch 1 (all 8 prompts) and at
batch 8. We keep ours, because it is **faster at batch 8** (the batch
:func:`~lopa_fed.codegen.scoring.evaluate_pass_at_1` scores with) and because the library
**cannot sample from a seeded** ``torch.Generator``:

* batch 8, 64 new tokens max, median of 7 interleaved runs, 1 torch thread: ours
  92.2 ms per generated token, the library 105.6 (+14.6 % wall; +16.6 % CPU time, 45.9 vs
  53.5 ms); the library was slower in 6 of the 7 runs. The cause is structural: the
  library keeps computing finished rows until the last row ends (248 decode positions
  against our 167 here; ours drops finished rows from the batch and the KV cache), so
  the gap grows with uneven row lengths, e.g. MBPP's 256-token budget.
* batch 1 (3 prompts alone): level, 202.5 vs 188.5 ms per token wall (library x0.93),
  CPU x1.07; not a reason either way.
* sampling: the library draws with ``torch.multinomial`` on the global RNG and takes no
  generator, while :func:`generate` must be reproducible from ``config.seed`` or a caller's
  generator without touching global state; so greedy-only use of the library would still
  leave this loop for sampling: two decoders instead of one.

Measured on a shared 2-core machine (1-minute load 6-7; wall times are noisy, CPU times
and the position counts are not) with ``.venv/bin/python bench/generate.py --repeats 7``;
results in ``bench/results/generate.json``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..backbone import FrozenModel
from .stops import cut_at_stops, has_stop

#: Tokens decoded to look for a stop string (stop strings are much shorter than this).
_TAIL = 48

__all__ = ["GenerationConfig", "generate", "generate_tokens", "prompt_layout", "sample_next"]


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode.

    Parameters
    ----------
    max_new_tokens : int
        Upper bound on generated tokens per row.
    do_sample : bool
        ``False``: greedy (argmax). ``True``: sample from the temperature-scaled,
        top-p-truncated distribution.
    temperature : float
        Softmax temperature for sampling (> 0).
    top_p : float
        Nucleus mass in ``(0, 1]``; ``1.0`` disables truncation.
    stop : tuple of str
        A row stops as soon as its decoded continuation contains one of these;
        :func:`generate` cuts the text before the earliest one.
    seed : int
        Seed of the sampling generator (ignored when greedy).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 9876

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def prompt_layout(
    frozen: FrozenModel, input_ids: Sequence[Sequence[int]], z: torch.Tensor | np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``[pad ; Z ; x]`` embeddings, attention mask and position ids.

    Parameters
    ----------
    frozen : FrozenModel
        A ``causal`` frozen model.
    input_ids : sequence of B token-id sequences
        Unpadded prompts (each non-empty).
    z : B×T×d tensor or array, optional
        Soft prefix; ``None`` (or ``T = 0``) for none.

    Returns
    -------
    embeds : B×(T+L)×d
        ``L`` is the longest prompt.
    mask : B×(T+L)
        Zeros on the leading padding, ones on ``Z`` and ``x``.
    position_ids : B×(T+L)
        ``cumsum(mask) - 1`` clamped at 0 (padding gets 0).
    """
    if len(input_ids) == 0:
        raise ValueError("generate needs at least one prompt")
    if any(len(x) == 0 for x in input_ids):
        raise ValueError("every prompt needs at least one token")
    z = frozen.as_tensor(z)
    if z is not None and z.shape[0] != len(input_ids):
        raise ValueError(f"z has batch size {z.shape[0]} but there are {len(input_ids)} prompts")
    pad = int(frozen.tokenizer.pad_token_id)
    L = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), L), pad, dtype=torch.long)
    mask = torch.zeros((len(input_ids), L), dtype=torch.long)
    for i, x in enumerate(input_ids):
        ids[i, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        mask[i, : len(x)] = 1
    embeds, full_mask = frozen.build_inputs(z, ids, mask)  # right-padded [Z ; x ; pad]
    embeds, full_mask = frozen.left_align(embeds, mask=full_mask)  # [pad ; Z ; x]
    position_ids = (full_mask.cumsum(1) - 1).clamp(min=0)
    return embeds, full_mask, position_ids


def sample_next(
    logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick the next token of each row.

    Parameters
    ----------
    logits : B×V
        Next-token logits.
    config : GenerationConfig
        Greedy or temperature + top-p sampling.
    generator : torch.Generator, optional
        Source of randomness for sampling.

    Returns
    -------
    B
        Token ids (``long``).
    """
    if not config.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= config.top_p, 0.0)  # keeps at least the top token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _eos_ids(frozen: FrozenModel) -> set[int]:
    ids: set[int] = set()
    tok_eos = frozen.tokenizer.eos_token_id
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen_cfg = getattr(frozen.model, "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif isinstance(cfg_eos, (list, tuple)):
        ids.update(int(i) for i in cfg_eos)
    return ids


def _cache_names(model: torch.nn.Module) -> tuple[str, str]:
    """(forward keyword, output key) of the KV cache: ``cache`` in transformers 5, else ``past_key_values``.

    transformers 5 renamed the argument and warns that the old name goes away in 5.40.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return ("cache", "cache") if "cache" in params else ("past_key_values", "past_key_values")


def _advance(
    nxt: torch.Tensor, active: list[int], finished: set[int], out_ids: list[list[int]],
    eos: set[int], config: GenerationConfig, tok,
) -> list[int]:
    """Append each active row's new token; return the positions (in ``active``) of rows still running.

    A row finishes at an end-of-sequence token (not appended) or as soon as its decoded
    tail contains a stop string (the completing token is appended).
    """
    keep: list[int] = []
    for j, i in enumerate(active):
        if i in finished:
            continue
        t = int(nxt[j])
        if t in eos:
            finished.add(i)
            continue
        out_ids[i].append(t)
        # every step checks the tail, so a stop string is seen the step it completes
        if config.stop and has_stop(tok.decode(out_ids[i][-_TAIL:], skip_special_tokens=False), config.stop):
            finished.add(i)
            continue
        keep.append(j)
    return keep


@torch.no_grad()
def generate_tokens(
    frozen: FrozenModel,
    input_ids: Sequence[Sequence[int]],
    z: torch.Tensor | np.ndarray | None = None,
    config: GenerationConfig = GenerationConfig(),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Generate token ids for a batch of prompts with a soft prefix and a KV cache.

    Parameters
    ----------
    frozen : FrozenModel
        ``causal`` frozen model (or a LoRA clone of one).
    input_ids : sequence of B token-id sequences
        Unpadded prompts (e.g. :func:`lopa_fed.codegen.prompting.encode_prompt`).
    z : B×T×d tensor or array, optional
        Soft prefix from :meth:`PromptedModel.prompts`.
    config : GenerationConfig
        Decoding options.
    generator : torch.Generator, optional
        Sampling randomness; by default one seeded with ``config.seed``.

    Returns
    -------
    list of B lists of int
        Generated ids per row, without the end-of-sequence token. A row that hit
        a stop string ends with the token that completed it (the text still
        contains the stop string; :func:`generate` cuts it). Finished rows are
        dropped from the batch and the KV cache, so the remaining rows run faster.
    """
    if frozen.kind != "causal":
        raise ValueError(f"generation needs a causal frozen model, got kind {frozen.kind!r}")
    if config.do_sample and generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    embeds, mask, pos = prompt_layout(frozen, input_ids, z)
    tok, model = frozen.tokenizer, frozen.model
    eos, pad = _eos_ids(frozen), int(frozen.tokenizer.pad_token_id)
    cache_arg, cache_key = _cache_names(model)
    out_ids: list[list[int]] = [[] for _ in range(embeds.shape[0])]
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out[cache_key]
    can_prune = hasattr(cache, "batch_select_indices")
    active = list(range(embeds.shape[0]))  # rows of the current tensors → prompt index
    finished: set[int] = set()  # prompt indices that hit eos or a stop string
    next_pos = pos[:, -1:] + 1  # B×1
    for step in range(config.max_new_tokens):
        nxt = sample_next(out.logits[:, -1], config, generator)  # len(active)
        keep = _advance(nxt, active, finished, out_ids, eos, config, tok)
        if not keep or step == config.max_new_tokens - 1:
            break
        if can_prune and len(keep) < len(active):  # drop finished rows from the cache and the batch
            sel = torch.tensor(keep, dtype=torch.long)
            cache.batch_select_indices(sel)
            mask, next_pos, nxt = mask[sel], next_pos[sel], nxt[sel]
            active = [active[j] for j in keep]
        feed = torch.tensor([[pad if i in finished else int(t)] for i, t in zip(active, nxt)], dtype=torch.long)
        mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], 1)
        out = model(
            input_ids=feed, attention_mask=mask, position_ids=next_pos, use_cache=True, logits_to_keep=1,
            **{cache_arg: cache},
        )
        cache = out[cache_key]
        next_pos = next_pos + 1
    return out_ids


def generate(
    frozen: FrozenModel,
    input_ids: Sequence[Sequence[int]],
    z: torch.Tensor | np.ndarray | None = None,
    config: GenerationConfig = GenerationConfig(),
    generator: torch.Generator | None = None,
) -> list[str]:
    """Generate continuations as text, cut before the earliest stop string.

    Parameters
    ----------
    frozen, input_ids, z, config, generator
        As in :func:`generate_tokens`.

    Returns
    -------
    list of B str
        Decoded continuations (special tokens kept unless they are end-of-sequence
        tokens, which end a row and are never part of the text).
    """
    ids = generate_tokens(frozen, input_ids, z, config, generator)
    texts = [frozen.tokenizer.decode(x, skip_special_tokens=False) for x in ids]
    return [cut_at_stops(t, config.stop) for t in texts]
