"""Resolving a recipe against its base model and data, before the first step runs.

The rules are in :mod:`slmkit.pipeline.sizing`; this walks the steps in order (a
vocabulary trim changes what a later width target counts), measures each data spec
once, and refuses data a step cannot run on.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data import load_split, record_text
from .recipe import Recipe, resolved_options
from .sizing import (ADAPTIVE, BLOCKS, DATA_KEY, DECODER, SEQ, SEQ_KEY, VOCAB, DataStats,
                     base_shape, clamp_share, is_adaptive, measure_data, resolve_seq,
                     resolve_target, resolve_vocab, rule, too_small)


@dataclass
class Sizing:
    """The figures a build resolved, for the report."""

    base: dict
    data: dict[str, dict]
    options: list[dict]          # {step, option, value, rule, ...why}

    def as_dict(self) -> dict:
        return {"base": self.base, "data": self.data, "options": self.options}


def resolve(recipe: Recipe, tokenizer, model) -> tuple[Recipe, Sizing]:
    """``recipe`` with every adaptive option replaced by a number, and what was measured.

    Args:
        recipe: a validated :class:`~slmkit.pipeline.recipe.Recipe`.
        tokenizer, model: the base's tokenizer and model (a meta-device model will do).

    Raises:
        SlmError: data too small for a step, naming the minimum.
    """
    shape = base_shape(model)
    stats: dict[str, DataStats] = {}

    def data(spec: str) -> DataStats:
        if spec not in stats:
            stats[spec] = measure_data(spec, tokenizer)
        return stats[spec]

    steps, options, vocab = [], [], shape.vocab
    for i, step in enumerate(recipe.steps):
        opts = resolved_options(recipe, i, teacher_spec=recipe.base)
        st = data(opts[DATA_KEY[step.step]]) if step.step in DATA_KEY else None
        new = dict(step.options)
        for key in _ordered(step):
            value = step.options[key]
            kind, which = ADAPTIVE[(step.step, key)]
            r = rule(step.step, key, value)
            where = f"step '{step.name}'"
            info: dict = {"rule": r, "split": which}
            if kind == SEQ:
                n = resolve_seq(r, st, opts.get("batch_size", 4) if step.step != "prune"
                                else 1, where)
            elif kind == VOCAB:
                n, more = resolve_vocab(r, st, shape, tokenizer)
                info.update(more)
            elif kind == DECODER:
                n, more = resolve_target(r, shape, vocab)
                info.update(more)
            else:
                seq = new.get(SEQ_KEY.get(step.step, ""), opts.get(SEQ_KEY.get(step.step, "")))
                tokens = sum(st.tokens.values()) if opts.get("split") == "all" \
                    else st.tokens[which]                    # an eval step scoring all of it
                total = tokens // seq if kind == BLOCKS else tokens
                n = clamp_share(r, total)
                info.update(of=total, unit=f"sequences of {seq}" if kind == BLOCKS else "tokens")
                if kind == BLOCKS and n < 1:
                    raise too_small(st, where, seq, seq, f"one sequence of {seq} tokens")
            new[key] = n
            options.append({"step": step.name, "option": key, "value": n, **info})
        if step.step == "prune" and new.get("method") == "vocab" and new.get("vocab_size"):
            vocab = new["vocab_size"]
        steps.append(step.model_copy(update={"options": new}))
        _check_room(step, {**opts, **new}, st)
    update = {"steps": steps}
    if recipe.prompts is None:
        update["prompts"] = prompts_from(recipe.data)
    out = recipe.model_copy(update=update)
    base = {"spec": recipe.base, "params": shape.params, "embedding_params": shape.embedding,
            "decoder_params": shape.decoder, "vocab": shape.vocab, "hidden": shape.hidden,
            "tied_embeddings": shape.tied}
    return out, Sizing(base, {k: v.summary() for k, v in stats.items()}, options)


def _ordered(step) -> list[str]:
    """The step's adaptive options, sequence length first (the others count in it)."""
    keys = [k for k, v in step.options.items() if is_adaptive(step.step, k, v)]
    return sorted(keys, key=lambda k: ADAPTIVE[(step.step, k)][0] != SEQ)


def _check_room(step, opts: dict, st: DataStats | None) -> None:
    """Refuse data a step cannot run on: every split it reads must hold a sequence."""
    if st is None:
        return
    where = f"step '{step.name}'"
    if st.records["val"] == 0 or st.tokens["val"] < 2:
        raise too_small(st, where, 0, 2, "a validation split to measure on")
    seq = opts.get(SEQ_KEY.get(step.step, ""))
    if step.step in ("finetune", "distill") and seq:
        batch = opts.get("batch_size", 4)
        if st.tokens["train"] < batch * seq:
            raise too_small(st, where, batch * seq, seq, f"one batch of {batch} x {seq} tokens")


def prompts_from(spec: str, n: int = 3, words: int = 6) -> list[str]:
    """Sample prompts from data: the first words of the first ``n`` held-out records."""
    out = []
    for rec in load_split(spec, "val"):
        head = " ".join(record_text(rec).split()[:words])
        if head:
            out.append(head)
        if len(out) == n:
            break
    return out
