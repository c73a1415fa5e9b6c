"""`seqserve train translator`: train the Transformer translator and evaluate it.

Data -> joint SentencePiece -> token-based batches -> label-smoothed cross-entropy with AdamW,
linear warm-up then inverse-square-root decay, gradient clipping, validation loss every
`eval_every` steps (early stopping, snapshots), the average of the last N snapshots or the
snapshot of lowest validation loss, whichever has the higher greedy validation BLEU (or the
lower validation loss: `select_by`), then beam search on the test split.

DIR receives: checkpoint.pt (kind "translator": model_args, train_config, state_dict, tokenizer
bytes, data, metrics), spm.model, metrics.json, examples.txt.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812 - the usual alias
from tqdm import tqdm

from core.flags import from_flags
from core.translation import Tokenizer, Translator, TranslatorSpec
from core.translation.normalization import normalizer
from training import checkpoint, distributed
from training.data.batching import collate, token_batches
from training.data.numbers import (
    SHORT_FORMS,
    SMALL,
    drawn_numbers,
    exact_by_digits,
    number_words,
)
from training.data.parallel import CorpusError, Pair, load_corpus
from training.data.sources import DatasetError
from training.data.tokenizer import train_tokenizer
from training.decoding import TorchStepModel
from training.models.transformer import EncoderDecoder, count_parameters, make_model
from training.translation_eval import choose_length_penalty, evaluate, write_examples
from training.translator_config import (
    SMALL_CORPUS,
    TRANSLATOR_PRESETS,
    TranslatorConfig,
    TranslatorTrainConfig,
    check_together,
    preset_for,
)
from training.translator_loss import Logits, token_loss

KIND = "translator"
TOKENIZER_FILE = "spm.model"
VALIDATION_SAMPLE = 200  # validation pairs kept in the checkpoint for export checks


@dataclass
class Encoded:
    """Token ids of sentence pairs: sources end with EOS, targets are bare. `pairs` are the
    texts they came from (for resampling their segmentation)."""

    src: list[list[int]]
    tgt: list[list[int]]
    pairs: list[Pair] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class FitResult:
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    validation_seconds: float = 0.0  # of `seconds`: rank 0 computing validation losses
    target_tokens: int = 0
    stopped_by: str = ""
    best_val_loss: float = math.inf
    final_val_loss: float = math.inf
    averaged: bool = False
    # the score of each candidate when a score chose between them: {"averaged": x, "best": y}
    selection: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(
    step: int,
    warmup: int,
    schedule: str = "inverse_sqrt",
    progress: float = 0.0,
    warm_progress: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at `step` (counting from 1): linear warm-up to 1 at
    `warmup`, then `inverse_sqrt` decay, or `linear` decay to 0 at the end of the run.
    `progress` is the fraction of the run done (steps or time budget, whichever is further) and
    `warm_progress` that fraction when warm-up ended, so the linear part starts at 1."""
    step = max(step, 1)
    if step < warmup:
        return step / warmup
    if schedule == "inverse_sqrt":
        return math.sqrt(warmup / step)
    return max(0.0, 1.0 - progress) / max(1e-9, 1.0 - warm_progress)


def encode_pairs(
    tokenizer: Tokenizer, pairs: list[Pair], max_source: int, max_target: int
) -> tuple[Encoded, int]:
    """Ids of the pairs that fit the limits, and how many did not."""
    out, dropped = Encoded([], []), 0
    for src, tgt in pairs:
        s, t = tokenizer.encode_source(src), tokenizer.encode(tgt)
        if not s or len(s) > max_source or len(t) + 1 > max_target:
            dropped += 1
            continue
        out.src.append(s)
        out.tgt.append(t)
        out.pairs.append((src, tgt))
    return out, dropped


def resampled(
    tokenizer: Tokenizer, data: Encoded, alpha: float, max_source: int, max_target: int
) -> Encoded:
    """Subword regularization: `data`'s pairs segmented afresh, each sampled from the
    SentencePiece model with `alpha`. A pair whose sample exceeds the limits keeps its
    deterministic ids. One sentence per call: SentencePiece's list call samples on fresh
    worker threads whose generators all start from the same seed, so every epoch would get
    the same segmentation; the calling thread's generator goes on (spm.set_random_generator_seed
    seeds it)."""

    def sample(texts: list[str]) -> list[list[int]]:
        return [
            tokenizer.sp.encode(
                text, out_type=int, enable_sampling=True, alpha=alpha, nbest_size=-1
            )
            for text in texts
        ]

    srcs = sample([s for s, _ in data.pairs])
    tgts = sample([t for _, t in data.pairs])
    out = Encoded([], [], data.pairs)
    for i, (s, t) in enumerate(zip(srcs, tgts, strict=True)):
        s = [*s, tokenizer.eos_id]
        if not t or len(s) > max_source or len(t) + 1 > max_target:
            s, t = data.src[i], data.tgt[i]
        out.src.append(s)
        out.tgt.append(t)
    return out


def _tensors(
    data: Encoded, idx: np.ndarray, config: TranslatorConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    arrays = collate(
        [data.src[i] for i in idx],
        [data.tgt[i] for i in idx],
        config.pad_id,
        config.bos_id,
        config.eos_id,
    )
    return tuple(torch.from_numpy(a).to(device) for a in arrays)  # [B, S], [B, T], [B, T]


@torch.no_grad()
def validation_loss(
    model: EncoderDecoder, data: Encoded, max_tokens: int, device: torch.device
) -> float:
    """Mean per-token negative log-likelihood (no smoothing)."""
    model.eval()
    c = model.config
    total, count = 0.0, 0
    lens = np.array([len(s) for s in data.src]), np.array([len(t) + 1 for t in data.tgt])
    for idx in token_batches(*lens, max_tokens):
        src, tgt_in, tgt_out = _tensors(data, idx, c, device)
        log_probs = model(src, tgt_in)  # [B, T, V]
        total += float(
            F.nll_loss(
                log_probs.flatten(0, 1).float(),
                tgt_out.flatten(),
                ignore_index=c.pad_id,
                reduction="sum",
            )
        )
        count += int((tgt_out != c.pad_id).sum())
    return total / max(count, 1)


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts (checkpoint averaging)."""
    return {
        k: sum(s[k].float() for s in states).div(len(states)).to(states[0][k].dtype)
        for k in states[0]
    }


def _snapshot(model: EncoderDecoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(
    model: EncoderDecoder,
    tc: TranslatorTrainConfig,
    train: Encoded,
    val: Encoded,
    device: torch.device,
    quiet: bool = False,
    resample: Callable[[], Encoded] | None = None,
    score: Callable[[EncoderDecoder], float] | None = None,
    world: distributed.World = distributed.SINGLE,
) -> FitResult:
    """Train in place; on return the model holds the averaged or the best weights.
    `resample`, when given, makes each epoch's training ids (subword regularization).
    `score`, when given, chooses between those two (higher wins, the average on ties);
    without it the validation loss chooses. Under torchrun (`world`) each rank trains on its
    share of every batch; rank 0's clock is the run's, and rank 0 alone validates, decides
    when to stop and which weights to keep: the other ranks return once training ends."""
    c = model.config
    net = distributed.wrap(world, Logits(model)) if world.parallel else None
    opt = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay
    )
    rng = np.random.default_rng(tc.seed)
    snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=max(tc.average_last, 1))
    best_state: dict[str, torch.Tensor] | None = None
    result, bad, last_eval = FitResult(), 0, 0
    budget = tc.max_minutes * 60 or math.inf
    start = time.monotonic()
    # the bar counts to max_steps, or with a time budget to the steps that budget will give at
    # the pace so far (re-estimated as it goes), so that its percentage and ETA mean the run's end
    bar = tqdm(total=tc.max_steps, disable=quiet, unit="step", dynamic_ncols=True, file=sys.stderr)
    window_tokens, window_start = 0, time.monotonic()
    warm_progress = 0.0
    while not result.stopped_by:
        result.epochs += 1
        if resample is not None:
            train = distributed.from_main(world, resample)  # one sample for every rank
        src_lens = np.array([len(s) for s in train.src])  # [N]
        tgt_lens = np.array([len(t) + 1 for t in train.tgt])  # [N]
        for idx in token_batches(src_lens, tgt_lens, tc.max_tokens, rng, tc.batch_pool):
            model.train()
            part, weight = distributed.share(world, idx, tgt_lens[idx])
            src, tgt_in, tgt_out = _tensors(train, part, c, device)
            ntok = int(tgt_lens[idx].sum())  # the whole batch's target tokens
            loss = token_loss(
                model, src, tgt_in, tgt_out, tc.label_smoothing, tc.rdrop_alpha, tc.bf16, net
            )
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()  # DDP averages the ranks' gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
            # rank 0's clock, so that the learning rate and the budget's end agree
            elapsed = distributed.decide(world, time.monotonic() - start)
            progress = max(result.steps / tc.max_steps, elapsed / budget)
            if result.steps + 1 == tc.warmup:
                warm_progress = progress
            lr = tc.lr * lr_factor(
                result.steps + 1, tc.warmup, tc.schedule, progress, warm_progress
            )
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            train_loss = float(loss.detach())  # under torchrun, rank 0's share's: shown only
            result.steps += 1
            result.target_tokens += ntok
            window_tokens += ntok
            if result.steps >= tc.max_steps:
                result.stopped_by = "max_steps"
            elif elapsed >= budget:
                result.stopped_by = "max_minutes"
            if result.steps % tc.eval_every == 0 or result.stopped_by:
                last_eval, early = result.steps, False
                if world.main:
                    validation_started = time.monotonic()
                    val_loss = validation_loss(model, val, 2 * tc.max_tokens, device)
                    result.validation_seconds += time.monotonic() - validation_started
                    snapshots.append(_snapshot(model))
                    result.history.append(
                        {
                            "step": result.steps,
                            "val_loss": round(val_loss, 4),
                            "train_loss": round(train_loss, 4),
                            "minutes": round(elapsed / 60, 2),
                        }
                    )
                    if val_loss < result.best_val_loss - 1e-4:
                        result.best_val_loss, best_state, bad = val_loss, _snapshot(model), 0
                    else:
                        bad += 1
                        early = bad >= tc.patience and not result.stopped_by
                    bar.set_postfix_str(
                        f"val {val_loss:.3f} best {result.best_val_loss:.3f}", refresh=False
                    )
                if distributed.decide(world, early):
                    result.stopped_by = "early_stopping"
            if result.steps % 10 == 0 or result.stopped_by:
                rate = window_tokens / max(time.monotonic() - window_start, 1e-9)
                window_tokens, window_start = 0, time.monotonic()
                left = ""
                if budget < math.inf:
                    left = f" budget {max(budget - elapsed, 0) / 60:.1f} min"
                    bar.total = max(
                        result.steps, min(tc.max_steps, round(result.steps * budget / elapsed))
                    )
                bar.set_description(
                    f"loss {train_loss:.3f} lr {lr:.2e} {rate:,.0f} tok/s{left}", refresh=False
                )
            bar.update(1)
            if result.stopped_by:
                break
    bar.close()
    result.seconds = time.monotonic() - start
    if not world.main:
        return result
    assert last_eval == result.steps and best_state is not None
    result.final_val_loss = result.best_val_loss
    if len(snapshots) > 1:
        averaged_state = average_states(list(snapshots))
        model.load_state_dict(averaged_state)
        averaged = validation_loss(model, val, 2 * tc.max_tokens, device)
        result.history.append({"step": result.steps, "val_loss_averaged": round(averaged, 4)})
        if score is None:
            result.averaged = averaged <= result.best_val_loss
        else:
            result.selection["averaged"] = score(model)
            model.load_state_dict(best_state)
            result.selection["best"] = score(model)
            result.averaged = result.selection["averaged"] >= result.selection["best"]
        if result.averaged:
            result.final_val_loss = averaged
            model.load_state_dict(averaged_state)
    if not result.averaged:
        model.load_state_dict(best_state)
    return result


def torch_translator(
    model: EncoderDecoder, tokenizer: Tokenizer, tc: TranslatorTrainConfig, device: torch.device
) -> Translator:
    """The serving pipeline (search, batching, tokenizer) on the PyTorch model."""
    c = model.config
    spec = TranslatorSpec(
        tc.src,
        tc.tgt,
        c.bos_id,
        c.eos_id,
        c.pad_id,
        tc.max_source_tokens,
        c.max_len - 1,
        tc.beam_size,
        TOKENIZER_FILE,
        c.num_decoder_layers,
        c.num_heads,
        c.head_dim,
        tc.eval_batch_rows,
        source_normalization=tc.source_normalization,
    )
    return Translator(TorchStepModel(model, device), tokenizer, spec)


def greedy_bleu(
    model: EncoderDecoder,
    tokenizer: Tokenizer,
    tc: TranslatorTrainConfig,
    device: torch.device,
    pairs: list[Pair],
) -> float:
    """sacreBLEU of greedy decoding on `pairs` (validation), decoded on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # step-by-step decoding is latency-bound: more threads only spin
    try:
        scores, _ = evaluate(
            torch_translator(model, tokenizer, tc, device), pairs, 1, 0.0, tc.eval_batch_rows
        )
    finally:
        torch.set_num_threads(threads)
    return float(scores["bleu"])  # type: ignore[arg-type]


def numbers_scores(
    translator: Translator,
    tc: TranslatorTrainConfig,
    small: list[Pair],
    test: list[Pair],
    test_hyps: list[str],
) -> dict[str, object]:
    """The numbers corpus beyond the generalisation test (`test`, its translations
    `test_hyps`): the small numbers people type first (0 to SMALL, scored apart), and exact
    match per digit count over both sets; their mean is the exact match on numbers drawn with
    a uniform digit count."""
    drawn = drawn_numbers(tc.seed, tc.numbers_train, tc.numbers_heldout, tc.numbers_max_digits)
    number_of = {number_words(n, tc.src): n for n in drawn["test"] + drawn["small"]}
    number_of.update((words, n) for n, words in SHORT_FORMS.items())
    scores, hyps = evaluate(translator, small, tc.beam_size, tc.length_penalty, tc.eval_batch_rows)
    wrong = [f"{s} -> {h}" for (s, t), h in zip(small, hyps, strict=True) if h != t]
    pairs = small + test
    by_digits = exact_by_digits(
        [number_of[s] for s, _ in pairs], hyps + test_hyps, [t for _, t in pairs]
    )
    return {
        "small_numbers": {
            "range": f"0-{SMALL}, {', '.join(SHORT_FORMS.values())}",
            "exact_match": scores["exact_match"],
            "sentences": len(small),
            "wrong": wrong[:20],
        },
        "exact_match_by_digits": by_digits,
        "exact_match_uniform_digits": round(sum(by_digits.values()) / len(by_digits), 4),
    }


def pick_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to this torch build")
    return torch.device(name)


def check_bf16(device: torch.device) -> None:
    """Refuse bf16 autocast on a CPU without bf16 matrix units (AVX512-BF16 or AMX): oneDNN
    then emulates it, 17x slower than fp32 per training step on the 2-core AVX2 machine."""
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise ValueError(
            "--bf16: this CPU has no bf16 matrix units (AVX512-BF16 or AMX), so "
            "bf16 autocast would run many times slower than fp32; drop --bf16, "
            "or train with --device cuda"
        )


@dataclass
class Tokenized:
    """A run's corpus, the tokenizer trained on it, and the ids that training sees."""

    corpus: dict[str, list[Pair]]
    spm_model: bytes
    tokenizer: Tokenizer
    config: TranslatorConfig  # the model's, with the tokenizer's vocabulary and special ids
    train: Encoded
    val: Encoded
    dropped: int  # training pairs over the length limits


def tokenized(
    model: TranslatorConfig,
    tc: TranslatorTrainConfig,
    world: distributed.World = distributed.SINGLE,
) -> Tokenized:
    """Load the corpus, train its SentencePiece model (rank 0 only, under torchrun) and encode
    the training and validation pairs."""
    corpus = load_corpus(
        tc.data,
        tc.src,
        tc.tgt,
        tc.seed,
        tc.test_split,
        tc.numbers_train,
        tc.numbers_heldout,
        tc.numbers_max_digits,
        tc.extra_sources,
    )
    normalize = normalizer(tc.source_normalization)  # the served tokenizer does the same
    spm_model = distributed.from_main(
        world,
        lambda: train_tokenizer(
            [text for src, tgt in corpus["train"] for text in (normalize(src), tgt)],
            tc.vocab_size,
            tc.spm_model,
            tc.seed,
        ),
    )
    tokenizer = Tokenizer.from_bytes(spm_model, tc.source_normalization)
    config = replace(
        model,
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )
    train_ids, dropped = encode_pairs(
        tokenizer, corpus["train"], tc.max_source_tokens, config.max_len
    )
    val_ids, _ = encode_pairs(tokenizer, corpus["val"], tc.max_source_tokens, config.max_len)
    return Tokenized(corpus, spm_model, tokenizer, config, train_ids, val_ids, dropped)


def train(
    model: TranslatorConfig,
    tc: TranslatorTrainConfig,
    out: Path,
    quiet: bool = False,
    world: distributed.World = distributed.SINGLE,
) -> dict[str, object]:
    """The whole recipe; returns the metrics also written to DIR/metrics.json. `model`'s
    vocabulary size and special ids are set from the tokenizer trained here. Under torchrun
    (`world`, training/distributed.py) rank 0 trains the tokenizer, every rank trains on its
    share of each batch, rank 0 alone evaluates and writes, and the other ranks return {}."""
    check_together(model, tc)
    device = pick_device(world.device(tc.device))
    quiet = quiet or not world.main
    if tc.bf16:
        check_bf16(device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    set_seed(tc.seed)
    wall = time.monotonic()
    data = tokenized(model, tc, world)
    corpus, spm_model, tokenizer, config = data.corpus, data.spm_model, data.tokenizer, data.config
    train_ids, val_ids, dropped = data.train, data.val, data.dropped
    set_seed(tc.seed)
    model = make_model(config).to(device)
    if world.parallel:
        torch.manual_seed(tc.seed + world.rank)  # each rank its own dropout masks
    params = count_parameters(model)
    if not quiet and world.main:
        print(
            f"{tc.data} {tc.src}->{tc.tgt}: {len(train_ids)} training pairs ({dropped} too "
            f"long), {len(val_ids)} validation; vocabulary {config.vocab_size}; "
            f"{params:,} parameters on {device}",
            file=sys.stderr,
        )
    resample = None
    if tc.subword_alpha > 0:

        def resample() -> Encoded:
            return resampled(
                tokenizer, train_ids, tc.subword_alpha, tc.max_source_tokens, config.max_len
            )

    limit = tc.max_source_tokens
    val = [p for p in corpus["val"] if len(tokenizer.encode_source(p[0])) <= limit]
    score = None
    if tc.select_by == "bleu":

        def score(candidate: EncoderDecoder) -> float:
            return greedy_bleu(candidate, tokenizer, tc, device, val)

    fitted = fit(model, tc, train_ids, val_ids, device, quiet, resample, score, world)
    distributed.leave(world)  # rank 0 evaluates and writes alone
    if not world.main:
        return {}
    data_info = {
        "name": tc.data,
        "src": tc.src,
        "tgt": tc.tgt,
        "sizes": {k: len(v) for k, v in corpus.items()},
        "train_dropped": dropped,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_FILE).write_bytes(spm_model)
    sample = [list(p) for p in corpus["val"][:VALIDATION_SAMPLE]]  # export's parity sentences
    payload = {
        "kind": KIND,
        "model_args": asdict(config),
        "train_config": checkpoint.plain(tc),
        "state_dict": _snapshot(model),
        "tokenizer": spm_model,
        "data": {**data_info, "validation_sample": sample},
        "step": fitted.steps,
        "metrics": {},
    }
    checkpoint.save(out, payload)  # before evaluating: a long evaluation loses nothing

    test = [p for p in corpus["test"] if len(tokenizer.encode_source(p[0])) <= limit]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # step-by-step decoding is latency-bound: more threads only spin
    search: dict[str, object] = {}
    try:
        if tc.length_penalty_grid:
            chosen, bleu = choose_length_penalty(
                torch_translator(model, tokenizer, tc, device),
                val,
                tc.beam_size,
                tc.length_penalty_grid,
                tc.eval_batch_rows,
            )
            tc = replace(tc, length_penalty=chosen)  # the test score and the served default
            payload["train_config"] = checkpoint.plain(tc)
            search = {
                "split": "val",
                "sentences": len(val),
                "beam_size": tc.beam_size,
                "bleu": bleu,
                "chosen": chosen,
            }
            if not quiet:
                print(f"length penalty on validation: {bleu} -> {chosen}", file=sys.stderr)
        scores, hyps = evaluate(
            torch_translator(model, tokenizer, tc, device),
            test,
            tc.beam_size,
            tc.length_penalty,
            tc.eval_batch_rows,
        )
        if tc.data == "numbers":
            translator = torch_translator(model, tokenizer, tc, device)
            small = [p for p in corpus["small"] if len(tokenizer.encode_source(p[0])) <= limit]
            scores.update(numbers_scores(translator, tc, small, test, hyps))
    finally:
        torch.set_num_threads(threads)
    metrics: dict[str, object] = {
        **scores,
        "split": tc.test_split if tc.data == "multi30k" else "test",
        "test_dropped_too_long": len(corpus["test"]) - len(test),
        "parameters": params,
        "train_seconds": round(fitted.seconds, 1),
        "wall_seconds": round(time.monotonic() - wall, 1),
        "steps": fitted.steps,
        "epochs": fitted.epochs,
        "stopped_by": fitted.stopped_by,
        "train_target_tokens_per_second": round(fitted.target_tokens / fitted.seconds, 1),
        "train_target_tokens": fitted.target_tokens,
        "validation_seconds": round(fitted.validation_seconds, 1),
        "best_val_loss": round(fitted.best_val_loss, 4),
        "final_val_loss": round(fitted.final_val_loss, 4),
        "checkpoint_averaged": fitted.averaged,
        "average_last": tc.average_last,
        "checkpoint_selection": {
            "by": tc.select_by,
            **({"greedy_val_bleu": fitted.selection} if fitted.selection else {}),
        },
        "device": str(device),
        "torch_threads": threads,
        "processes": world.size,  # torchrun's; max_tokens is the global batch
        "load_average_1m": round(os.getloadavg()[0], 2),
        "data": data_info,
        "validation": fitted.history,
    }
    if search:
        metrics["length_penalty_search"] = search
    payload["metrics"] = {k: v for k, v in metrics.items() if k != "validation"}
    checkpoint.save(out, payload)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_examples(out / "examples.txt", test, hyps, tc.examples)
    return metrics


def load_translator_checkpoint(
    folder: Path,
) -> tuple[EncoderDecoder, TranslatorTrainConfig, bytes, dict]:
    """(model in eval mode, train config, tokenizer bytes, payload) from DIR/checkpoint.pt."""
    payload = checkpoint.load(folder)
    if payload["kind"] != KIND:
        raise checkpoint.CheckpointError(f"{folder}: a {payload['kind']} checkpoint, not a {KIND}")
    config = checkpoint.rebuild(TranslatorConfig, payload["model_args"])
    model = make_model(config)
    model.load_state_dict(payload["state_dict"])
    tc = checkpoint.rebuild(TranslatorTrainConfig, payload["train_config"])
    return model.eval(), tc, payload["tokenizer"], payload


def configs_from_args(args: argparse.Namespace) -> tuple[TranslatorConfig, TranslatorTrainConfig]:
    """The preset (by --preset, else by --data), with the flags given on top; each flag is
    generated from its config field (core/flags.py). `train` checks the two together before
    any slow work."""
    data = args.data or "numbers"
    name = args.preset
    if not name:
        pairs = None
        if data not in ("numbers", "multi30k"):  # a user's corpus: sized by its pairs
            src = args.src or TRANSLATOR_PRESETS["multi30k"].train.src
            tgt = args.tgt or TRANSLATOR_PRESETS["multi30k"].train.tgt
            pairs = len(load_corpus(data, src, tgt, args.seed or 0)["train"])
        name = preset_for(data, pairs)
        if pairs is not None and distributed.launched_main():
            rule = "fewer" if pairs < SMALL_CORPUS else "at least"
            print(
                f"preset {name}: {pairs:,} training pairs, {rule} than {SMALL_CORPUS:,} "
                "(docs/translation.md; --preset chooses another)",
                file=sys.stderr,
            )
    preset = TRANSLATOR_PRESETS[name]
    model = from_flags(TranslatorConfig, args, base=preset.model)
    fixed = {}
    if args.length_penalty is not None and args.length_penalty_grid is None:
        fixed["length_penalty_grid"] = ()  # an alpha given by hand is used as given
    return model, from_flags(TranslatorTrainConfig, args, base=preset.train, **fixed)


def run(args: argparse.Namespace) -> int:
    try:
        model, tc = configs_from_args(args)
        with distributed.joined(tc.device) as world:
            metrics = train(model, tc, Path(args.out), args.quiet, world)
        if not world.main:
            return 0
    except (CorpusError, DatasetError, ValueError) as err:
        print(f"seqserve train translator: {err}", file=sys.stderr)
        return 2
    shown = {
        k: metrics[k]
        for k in (
            "bleu",
            "chrf",
            "exact_match",
            "exact_match_uniform_digits",
            "split",
            "beam_size",
            "train_seconds",
            "parameters",
        )
        if k in metrics
    }
    if "small_numbers" in metrics:
        shown["exact_match_small_numbers"] = metrics["small_numbers"]["exact_match"]  # type: ignore[index]
    print(json.dumps(shown))
    return 0
