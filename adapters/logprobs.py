"""Log-probabilities of replies: per token at reply positions only, summed per reply, with a shared prompt run once,
and a reference model's top-k teachers.

Sequences are (token ids, prompt length) pairs as `adapters.data.encode` makes them; a reply's log-probability is
summed over its tokens, in nats. Logits are only computed at the positions that predict a reply token.
"""

from __future__ import annotations

import torch

from adapters.data import Batch, collate
from adapters.losses import Teacher, rest_log_mass

Sequence = tuple[list[int], int]
"""Token ids of prompt + reply, and the prompt's length."""


def completion_log_probs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities at every position that predicts a completion token, shape (tokens, vocab), in
    row-major order, and the batch row of each, shape (tokens,)."""
    predicts = torch.zeros_like(batch.completion_mask)
    predicts[:, :-1] = batch.completion_mask[:, 1:]  # position t predicts token t+1
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=predicts)
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()  # (tokens kept, vocab), row-major order
    return torch.log_softmax(logits, dim=-1), predicts.nonzero()[:, 0]


def shared_prompt_log_probs(model: torch.nn.Module, first: list[Sequence], second: list[Sequence],
                            pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_log_probs(model, collate(first + second, pad_id))` for pairs whose two sequences share their
    prompt (`first[i]` and `second[i]`: the same ids up to the same prompt length), with each prompt run once.

    The prompts go through the model once, right-padded, keeping their key/value cache; the cache is repeated for
    the two completions of each pair, which then run with positions that continue their own prompt (a padded
    prompt's gap is masked). Gradients flow through the cache into the prompt, as in the plain forward. A DPO
    step's prompt is then computed once instead of twice: in a long conversation it is most of the tokens."""
    n = len(first)
    prompts = [ids[:plen] for ids, plen in first]
    lengths = torch.tensor([len(p) for p in prompts])
    prompt_ids = torch.full((n, int(lengths.max())), pad_id, dtype=torch.long)
    for row, ids in enumerate(prompts):
        prompt_ids[row, : len(ids)] = torch.tensor(ids)
    prompt_mask = (torch.arange(prompt_ids.shape[1])[None, :] < lengths[:, None]).long()
    last = torch.zeros_like(prompt_mask, dtype=torch.bool)
    last[torch.arange(n), lengths - 1] = True  # the prompt's last token predicts the completion's first
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True, logits_to_keep=last)
    first_logits, cache = out.logits, out.cache  # (n, vocab): row i is prompt i's prediction
    completions = [ids[plen:] for ids, plen in (*first, *second)]  # rows: every first, then every second
    sizes = torch.tensor([len(c) for c in completions])
    cont_ids = torch.full((2 * n, int(sizes.max())), pad_id, dtype=torch.long)
    for row, ids in enumerate(completions):
        cont_ids[row, : len(ids)] = torch.tensor(ids)
    order = torch.arange(2 * n) % n  # each row's prompt
    cache.batch_select_indices(order)
    steps = torch.arange(cont_ids.shape[1])[None, :]
    cont_mask = (steps < sizes[:, None]).long()
    keep = steps < (sizes - 1)[:, None]  # completion token t predicts token t+1 (the last predicts nothing kept)
    out = model(input_ids=cont_ids, attention_mask=torch.cat([prompt_mask[order], cont_mask], dim=1),
                position_ids=lengths[order][:, None] + steps, cache=cache, logits_to_keep=keep)
    cont_logits = out.logits.reshape(-1, out.logits.shape[-1])  # (kept, vocab), row-major
    # Row-major order as the plain forward gives it: each row's first prediction (from its prompt), then the rest.
    starts = torch.cumsum(sizes - 1, 0) - (sizes - 1)
    index = torch.cat([torch.cat([order[r:r + 1], n + starts[r] + torch.arange(int(sizes[r]) - 1)])
                       for r in range(2 * n)])
    logits = torch.cat([first_logits.reshape(n, -1), cont_logits])[index].float()
    return torch.log_softmax(logits, dim=-1), torch.repeat_interleave(torch.arange(2 * n), sizes)


def shares_prompts(first: list[Sequence], second: list[Sequence]) -> bool:
    """Whether each pair's two sequences start with the same prompt (what `shared_prompt_log_probs` needs)."""
    return all(a_len == b_len and a[:a_len] == b[:b_len] for (a, a_len), (b, b_len) in zip(first, second))


def summed_logps(batch: Batch, log_probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each row's completion tokens' log-probabilities summed, shape (batch,), from `completion_log_probs`' output."""
    targets = batch.input_ids[:, 1:][batch.completion_mask[:, 1:]]
    token_logps = log_probs.gather(1, targets[:, None]).squeeze(1)
    return torch.zeros(batch.input_ids.shape[0], dtype=token_logps.dtype).index_add(0, rows, token_logps)


def sequence_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens, shape (batch,)."""
    return summed_logps(batch, *completion_log_probs(model, batch))


def logps_in_chunks(model: torch.nn.Module, sequences: list[Sequence], pad_id: int, chunk: int = 8) -> torch.Tensor:
    """`sequence_logps` of `sequences`, `chunk` at a time, shape (sequences,)."""
    if not sequences:
        return torch.zeros(0)
    return torch.cat([sequence_logps(model, collate(sequences[i:i + chunk], pad_id))
                      for i in range(0, len(sequences), chunk)])


def teachers(model: torch.nn.Module, sequences: list[Sequence], pad_id: int, top_k: int,
             chunk: int = 8) -> tuple[list[Teacher], torch.Tensor]:
    """`model`'s top-k next-token distributions at each sequence's completion positions, and the summed
    log-probability of each completion, shape (sequences,), from the same forward (call without grad)."""
    out, sums = [], []
    for start in range(0, len(sequences), chunk):
        batch = collate(sequences[start:start + chunk], pad_id)
        log_probs, rows = completion_log_probs(model, batch)
        sums.append(summed_logps(batch, log_probs, rows))
        top, ids = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
        top = torch.cat([top, rest_log_mass(top)], dim=-1)
        for row in range(min(chunk, len(sequences) - start)):
            mine = rows == row
            out.append(Teacher(top[mine], ids[mine].to(torch.int32)))
    return out, torch.cat(sums) if sums else torch.zeros(0)
