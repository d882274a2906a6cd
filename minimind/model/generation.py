"""The decode loop: a prompt's continuation, one token per forward through the KV cache, and the
prompts it starts from (a pretraining document's start, or a conversation awaiting its answer).

One loop serves the training run's sample generations (a DeepSpeed engine, every rank in
lockstep) and ``python -m minimind.generate``. ``model`` is anything called as
``model(input_ids=..., cache=..., use_cache=True, logits_to_keep=1)`` that returns ``.logits``
(1, kept, vocab) and ``.cache``: ``MiniMindForCausalLM``, or a DeepSpeed engine wrapping it
(the engine forwards the call to its ``module``). The caller picks train or eval mode.
"""

from collections.abc import Callable

import torch


def prompt_token_ids(tokenizer, text: str) -> list[int]:
    """[bos] + the text's tokens, no eos: how pretraining documents start ([bos] text [eos])."""
    return [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)]


def chat_prompt_ids(tokenizer, messages: list[dict], template: str | None = None) -> list[int]:
    """The token ids of ``messages`` (``{"role", "content"}`` turns) rendered by ``template`` (None: the
    tokenizer's chat template) with the assistant's turn opened (``add_generation_prompt=True``), the text then
    tokenized as MiniMind's eval script does. A tokenizer without a chat template raises where ``template`` is
    None (check with ``require_chat_template``)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, chat_template=template)
    return tokenizer(text).input_ids


def chat_history_that_fits(tokenizer, messages: list[dict], max_positions: int, max_new_tokens: int,
                           template: str | None = None) -> tuple[list[dict], list[int]]:
    """The latest turns of ``messages`` whose ``chat_prompt_ids`` leave room for ``max_new_tokens`` within
    ``max_positions``, and those ids. Whole exchanges go, oldest first (each kept history starts at a user
    turn; a first system turn always stays), down to the last turn alone, which is kept even if it is too long
    (the caller lowers the new tokens or refuses it). ``template``: as ``chat_prompt_ids``'s."""
    system, turns = (messages[:1], messages[1:]) if messages and messages[0]["role"] == "system" else ([], messages)
    prompt = chat_prompt_ids(tokenizer, system + turns, template)
    while len(turns) > 1 and len(prompt) + max_new_tokens > max_positions:
        next_user = next((i for i in range(1, len(turns)) if turns[i]["role"] == "user"), len(turns) - 1)
        turns = turns[next_user:]
        prompt = chat_prompt_ids(tokenizer, system + turns, template)
    return system + turns, prompt


def new_tokens_that_fit(model, prompt_length: int, max_new_tokens: int) -> int:
    """How many of ``max_new_tokens`` fit after a prompt of ``prompt_length`` tokens: prompt and new
    tokens together stay within the model's ``config.max_position_embeddings`` (read from
    ``model.module`` for a DeepSpeed engine, whose own ``config`` is DeepSpeed's). A prompt longer
    than that is a ``ValueError``."""
    module = getattr(model, "module", model)
    max_positions = module.config.max_position_embeddings
    if prompt_length > max_positions:
        raise ValueError(f"a prompt of {prompt_length} tokens exceeds max_position_embeddings {max_positions}")
    return max(0, min(max_new_tokens, max_positions - prompt_length))


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token, a (1,) long tensor, from one position's ``logits`` (vocab,), computed in fp32.

    ``temperature`` 0: the argmax (on the logits' device). Otherwise the logits are divided by
    ``temperature``, only the ``top_k`` most likely tokens are kept (0: all), then only the
    smallest set of the most likely whose probabilities sum to at least ``top_p`` (the most
    likely token always stays), and one token is drawn with ``generator``, on its device.
    """
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    if generator is not None:
        logits = logits.to(generator.device)
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        above = sorted_probs.cumsum(-1) - sorted_probs  # probability of the tokens ranked above each one
        drop = above >= top_p
        drop[0] = False
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator)


def generate_tokens(model, prompt: list[int], max_new_tokens: int, *, device: torch.device,
                    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                    generator: torch.Generator | None = None, eos_token_id: int | None = None,
                    stop_at_eos: bool = True, on_token: Callable[[int], None] | None = None) -> list[int]:
    """New token ids after ``prompt`` (eos included if produced), under ``torch.no_grad()``.

    The prompt runs through the model once (prefill), then each new token alone with the KV
    cache the model returned; ``sample_next_token`` chooses each token (greedy when
    ``temperature`` is 0). The number of new tokens is clamped by ``new_tokens_that_fit`` so that
    prompt + new tokens never exceed ``max_position_embeddings``: N tokens take exactly N forwards.
    ``stop_at_eos``: stop after emitting ``eos_token_id`` (None: no token stops it); False always
    runs all N forwards, as ranks generating in lockstep must (the caller cuts at eos).
    ``on_token`` receives each new id as it is produced. The host reads each id as it comes (one
    device sync per token) only for ``on_token`` or to stop at eos; otherwise once, at the end.
    """
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    if temperature < 0 or top_k < 0 or not 0 <= top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0 and 0 <= top_p <= 1, got {temperature}, {top_k}, "
                         f"{top_p}")
    read_each = on_token is not None or (stop_at_eos and eos_token_id is not None)
    new_tokens: list[torch.Tensor] = []  # (1,) each, on the device they were drawn on
    input_ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, prompt), then (1, 1)
    cache = None
    with torch.no_grad():
        for _ in range(new_tokens_that_fit(model, len(prompt), max_new_tokens)):
            out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            token = sample_next_token(out.logits[0, -1], temperature, top_k, top_p, generator)  # (1,)
            new_tokens.append(token)
            if read_each:
                token_id = int(token.item())  # device sync: streamed, or compared with eos
                if on_token is not None:
                    on_token(token_id)
                if stop_at_eos and token_id == eos_token_id:
                    break
            input_ids = token.view(1, 1).to(device)
    return torch.cat(new_tokens).tolist() if new_tokens else []
