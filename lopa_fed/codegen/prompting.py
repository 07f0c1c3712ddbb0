"""Prompts for causal code models: chat templating and answer-only token ids.

:func:`encode_code_examples` builds the training data of the code tasks (loss on
the answer tokens only); :func:`encode_prompt` gives exactly the prompt part of
those ids, so generation sees at test time what training saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..data import EncodedDataset, Item
from ..errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from ..backbone import FrozenModel
    from ..tasks.code import CodeExample

__all__ = ["chat_prompt", "encode_answer_only", "encode_code_examples", "encode_prompt"]


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


def encode_code_examples(
    examples: Sequence[CodeExample], frozen: FrozenModel, max_length: int = 512, task: Any = None
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
    task : CodeTask, optional
        Recorded as the dataset's task.

    Returns
    -------
    EncodedDataset
        One :class:`~lopa_fed.data.Item` per example: ``input_ids`` = chat prompt
        + answer + eos (length ``L_i``), ``lm_labels`` of the same length with
        ``-100`` on the prompt, ``enc_text = (prompt, None)`` (the instance
        encoder sees only the prompt), ``uid`` the example's uid, ``label`` 0.
        The dataset keeps ``examples`` (scoring needs their checks).
    """
    if frozen.kind != "causal":
        raise ConfigError(f"code tasks need a causal frozen model, got kind {frozen.kind!r}")
    tok = frozen.tokenizer
    items = []
    for ex in examples:
        try:
            enc = encode_answer_only(tok, chat_prompt(tok, ex.prompt), ex.target, max_length)
        except ValueError as exc:
            raise DataError(f"{ex.uid}: {exc}; raise max_length") from exc
        items.append(Item(tuple(enc["input_ids"]), 0, (ex.prompt, None), -1, ex.uid, tuple(enc["labels"])))
    return EncodedDataset(items, tok.pad_token_id, task, examples)
