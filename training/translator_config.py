"""Frozen configs of the translator (stored in its checkpoint) and its named presets.

No torch here: the CLI generates `seqserve train translator`'s flags from these dataclasses
(core/flags.py) without importing torch. A field with a `flag` is the one definition of its
flag; the presets are instances of the two dataclasses, so each of their values is typed.

Presets (`--preset`, default by `--data`):
- `numbers`: the default `translator` of `make serve`: German number words -> English on the
  built-in corpus; a few minutes on 2 CPU cores (docs/translation.md has the measured numbers).
- `tiny`: seconds; for tests and `build-repository --preset tiny`.
- `multi30k`: the Multi30k de->en recipe (d 256, 4 encoder + 2 decoder layers, joint 8k
  SentencePiece); about an hour on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from core.flags import flag
from core.translation.normalization import NORMALIZATIONS, normalizer

MODEL = "model (default: the preset's)"
DATA = "data and tokenizer (default: the preset's)"
TRAINING = "training (default: the preset's)"
EVALUATION = "evaluation (default: the preset's)"


def _check(ok: bool, message: str) -> None:
    """A ValueError naming the setting (kept under `python -O`, unlike an assert)."""
    if not ok:
        raise ValueError(message)


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


NORMS = ("pre", "post")
ACTIVATIONS = ("relu", "gelu", "swish")
POSITION_LAYOUTS = ("interleaved", "halves")


@dataclass(frozen=True)
class TranslatorConfig:
    """What rebuilds the network; `model_args` of the checkpoint. D d_model, H num_heads.
    `vocab_size` and the special ids come from the tokenizer, once it is trained."""

    vocab_size: int = 0
    d_model: int = flag(256, "model width", group=MODEL)
    num_heads: int = flag(4, "attention heads", name="heads", group=MODEL)
    d_ff: int = flag(1024, "feed-forward width", name="ff", group=MODEL)
    num_encoder_layers: int = flag(3, "encoder layers", name="encoder-layers", group=MODEL)
    num_decoder_layers: int = flag(3, "decoder layers", name="decoder-layers", group=MODEL)
    dropout: float = flag(0.1, "dropout on residual outputs, embeddings", group=MODEL)
    attention_dropout: float | None = flag(
        None, "dropout on attention probabilities (None: --dropout)", group=MODEL
    )
    activation_dropout: float | None = flag(
        None, "dropout inside the feed-forward (None: --dropout)", group=MODEL
    )
    # positions: the longest source or target sequence, BOS/EOS included
    max_len: int = flag(256, "positions: longest source/target sequence", group=MODEL)
    # source, target embeddings and generator share one matrix
    tie_embeddings: bool = flag(
        True,
        "separate source, target and output embedding matrices",
        name="no-tie-embeddings",
        negate=True,
        group=MODEL,
    )
    pad_id: int = 0
    bos_id: int = 2  # the decoder's start token (an imported Marian model starts from pad)
    eos_id: int = 3
    # The layout of other families, for imported weights (export/marian.py); training uses the
    # defaults. norm "post": LayerNorm after each residual add and no final norm (Marian, the
    # original Transformer); "pre": before each sublayer, plus a final norm.
    norm: str = "pre"
    activation: str = "relu"  # the feed-forward's: ACTIVATIONS
    # sinusoid channels: "interleaved" sin, cos, sin, ... (the Annotated Transformer); "halves"
    # every sin, then every cos (Marian, fairseq)
    position_layout: str = "interleaved"
    scale_embedding: bool = True  # token embeddings times sqrt(D)

    def __post_init__(self) -> None:
        for name, value, known in (
            ("norm", self.norm, NORMS),
            ("activation", self.activation, ACTIVATIONS),
            ("position_layout", self.position_layout, POSITION_LAYOUTS),
        ):
            _check(value in known, f"{name} {value!r} is not one of {', '.join(known)}")
        for name in ("d_model", "num_heads", "d_ff", "num_encoder_layers", "num_decoder_layers"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(
            self.d_model % self.num_heads == 0,
            f"d_model {self.d_model} is not divisible by num_heads {self.num_heads} (--heads)",
        )
        _check(self.d_model % 2 == 0, "d_model must be even (sinusoidal encoding)")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            p = getattr(self, name)
            _check(p is None or 0 <= p < 1, f"{name} must be in [0, 1), got {p}")
        _check(self.max_len >= 2, f"max_len must be >= 2 (BOS and EOS), got {self.max_len}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def attention_p(self) -> float:
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @property
    def activation_p(self) -> float:
        return self.dropout if self.activation_dropout is None else self.activation_dropout


SCHEDULES = ("inverse_sqrt", "linear")
SELECT_BY = ("bleu", "loss")


@dataclass(frozen=True)
class TranslatorTrainConfig:
    """How the translator was trained and evaluated; `train_config` of the checkpoint."""

    data: str = flag(
        "numbers",
        "numbers (built-in German->English number words), multi30k (checked download or "
        "SEQSERVE_DATA_DIR), or a corpus path: X.tsv, a prefix X with X.<src>/X.<tgt>, or a "
        "folder with train/val/test.<lang>; also chooses the preset",
    )
    src: str = flag("de", "source language")
    tgt: str = flag("en", "target language")
    # multi30k test file; the others use their own test
    test_split: str = flag("test_2016_flickr", "multi30k test file", group=DATA)
    numbers_train: int = flag(
        60000,
        "numbers corpus: training numbers above 1000 (0 to 1000 are added 10 to 50 times each)",
        group=DATA,
    )
    numbers_heldout: int = flag(
        1000, "numbers corpus: validation and test numbers above 1000, each", group=DATA
    )
    numbers_max_digits: int = 6  # numbers corpus: up to 999,999
    vocab_size: int = flag(8000, "joint SentencePiece vocabulary (upper bound)", group=DATA)
    spm_model: str = flag(
        "unigram", "SentencePiece model type", choices=("unigram", "bpe"), group=DATA
    )
    source_normalization: str = flag(
        "none",
        "what every source goes through before the tokenizer, in training and serving alike "
        "(config.pbtxt keeps it): none, or casefold (Eins, EINS and eins are one input)",
        choices=tuple(NORMALIZATIONS),
        group=DATA,
    )
    max_source_tokens: int = flag(
        128,
        "longest source (EOS included); longer training pairs are dropped, the served model "
        "rejects longer inputs",
        group=DATA,
    )
    max_tokens: int = flag(4096, "tokens per batch, padding included", group=TRAINING)
    batch_pool: int = flag(
        0,
        "sort by length only within random pools of this many batches, so that repeated or "
        "rare-length pairs reach many batches an epoch (0 = one global sort)",
        group=TRAINING,
    )
    max_steps: int = flag(100000, "optimizer steps at most", group=TRAINING)
    max_minutes: float = flag(0.0, "training time budget (0 = none)", group=TRAINING)
    lr: float = flag(1e-3, "peak learning rate (AdamW), reached after --warmup", group=TRAINING)
    warmup: int = flag(4000, "linear warm-up steps", group=TRAINING)
    schedule: str = flag(
        "inverse_sqrt",
        "after warm-up: inverse_sqrt decay, or linear decay to 0 at the end of the run "
        "(--max-steps or --max-minutes, whichever comes first)",
        choices=SCHEDULES,
        group=TRAINING,
    )
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = flag(0.0, "AdamW weight decay", group=TRAINING)
    label_smoothing: float = flag(0.1, "label smoothing", group=TRAINING)
    # Subword regularization (Kudo 2018): every epoch, each training sentence is segmented
    # afresh by sampling from the SentencePiece model (unigram: smoothing alpha, over all
    # segmentations; bpe: BPE-dropout with this probability). 0 = the one best segmentation.
    subword_alpha: float = flag(
        0.0,
        "subword regularization: resample each training sentence's segmentation every epoch "
        "(unigram: smoothing alpha; bpe: dropout probability; 0 = off)",
        group=TRAINING,
    )
    # Multi30k only: training pairs from these source languages into the same targets too
    # (multi-source augmentation: the same captions in French, say). () = none.
    extra_sources: tuple[str, ...] = flag(
        (),
        "--data multi30k: also train on these source languages into the same targets (e.g. "
        "fr: Multi30k's captions in French)",
        metavar="LANG,...",
        parse=_words,
        group=TRAINING,
    )
    # R-Drop (Liang et al. 2021): each batch runs twice and the loss adds this weight times
    # the symmetric KL between the two dropout samples (fairseq's --rdrop-alpha). 0 = off.
    rdrop_alpha: float = flag(
        0.0,
        "R-Drop: run each batch twice and add this weight times the symmetric KL between the "
        "two dropout samples; a step then costs about twice the tokens, so halve --max-tokens "
        "to keep its cost (0 = off)",
        group=TRAINING,
    )
    clip: float = flag(1.0, "gradient-norm clip", group=TRAINING)
    eval_every: int = flag(
        1000, "steps between validation losses (and averaging snapshots)", group=TRAINING
    )
    patience: int = flag(
        6, "early stopping: evaluations without a better validation loss", group=TRAINING
    )
    average_last: int = flag(5, "checkpoint averaging over the last N", group=TRAINING)
    # What keeps the average of the last N or the snapshot of lowest validation loss: "bleu"
    # (greedy BLEU on the validation split, the average on ties) or "loss" (validation loss).
    select_by: str = flag(
        "bleu",
        "what chooses between the averaged and the best snapshot: greedy validation BLEU, or "
        "validation loss",
        choices=SELECT_BY,
        group=TRAINING,
    )
    beam_size: int = flag(4, "beam width on the test split", group=EVALUATION)
    # GNMT alpha at evaluation (and the served default)
    length_penalty: float = flag(0.6, "GNMT alpha (0 = none)", group=EVALUATION)
    # Alphas tried on the validation split after training; the best by BLEU replaces
    # `length_penalty` (ties: the first). Empty: keep `length_penalty`.
    length_penalty_grid: tuple[float, ...] = flag(
        (),
        "alphas tried on the validation split after training; the best by BLEU replaces "
        "--length-penalty ('' = none)",
        metavar="A,B,...",
        parse=_floats,
        group=EVALUATION,
    )
    eval_batch_rows: int = flag(64, "decoder rows while evaluating", group=EVALUATION)
    bf16: bool = flag(False, "bf16 autocast (CPU AMX or CUDA)", group=TRAINING)
    seed: int = flag(0, "random seed", group=TRAINING)
    device: str = flag("cpu", "cpu or cuda", group=TRAINING)
    threads: int = flag(0, "torch CPU threads (0 = torch's choice)", group=TRAINING)
    examples: int = flag(20, "example translations in examples.txt", group=EVALUATION)

    def __post_init__(self) -> None:
        _check(
            self.schedule in SCHEDULES,
            f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}",
        )
        normalizer(self.source_normalization)  # ValueError naming the known ones
        _check(
            self.select_by in SELECT_BY,
            f"select_by {self.select_by!r} is not one of {', '.join(SELECT_BY)}",
        )
        for name in (
            "vocab_size",
            "max_source_tokens",
            "max_tokens",
            "max_steps",
            "eval_every",
            "beam_size",
            "average_last",
            "eval_batch_rows",
        ):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.max_minutes >= 0, f"max_minutes must be >= 0, got {self.max_minutes}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}")
        _check(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")


@dataclass(frozen=True)
class TranslatorPreset:
    """A named recipe: the network and its training, as the two config dataclasses."""

    model: TranslatorConfig
    train: TranslatorTrainConfig


def check_together(model: TranslatorConfig, train: TranslatorTrainConfig) -> None:
    """What the two configs must agree on; ValueError naming the settings."""
    _check(
        train.max_source_tokens <= model.max_len,
        f"max_source_tokens {train.max_source_tokens} exceeds the model's max_len {model.max_len}",
    )


TRANSLATOR_PRESETS: dict[str, TranslatorPreset] = {
    "numbers": TranslatorPreset(
        model=TranslatorConfig(
            d_model=128,
            num_heads=4,
            d_ff=512,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dropout=0.1,
            max_len=128,
        ),
        train=TranslatorTrainConfig(
            data="numbers",
            numbers_train=60000,
            source_normalization="casefold",
            vocab_size=256,
            # BPE cuts number words into their parts (achthundert|sechs); unigram at this size
            # spelt some out letter by letter (a|c|h|t|hundertsechs)
            spm_model="bpe",
            max_tokens=3000,
            # one global length sort put all 50 copies of `null` into one batch an epoch:
            # never learnt; pools of 10 batches spread them (batching.py)
            batch_pool=10,
            max_source_tokens=64,
            lr=0.002,
            warmup=400,
            eval_every=250,
            patience=8,
            # Bounded by steps, so the demo is the same model on any machine: 2,000 steps is
            # what the 6-minute budget used to reach on 2 cores here. 30 minutes is only a
            # safety stop for a stalled machine.
            max_steps=2000,
            max_minutes=30.0,
            average_last=4,
            beam_size=4,
            length_penalty=0.0,
            threads=1,
        ),
    ),
    # tiny: 120 steps, about 6 s here; the 10-minute budget only guards against a stalled
    # machine (a budget that cut the steps short would make tests depend on machine load).
    "tiny": TranslatorPreset(
        model=TranslatorConfig(
            d_model=64,
            num_heads=4,
            d_ff=128,
            num_encoder_layers=1,
            num_decoder_layers=2,
            dropout=0.0,
            max_len=64,
        ),
        train=TranslatorTrainConfig(
            data="numbers",
            numbers_train=3000,
            source_normalization="casefold",
            numbers_heldout=100,
            vocab_size=96,
            max_tokens=2000,
            max_source_tokens=48,
            lr=0.003,
            warmup=60,
            eval_every=60,
            max_steps=120,
            max_minutes=10.0,
            average_last=2,
            beam_size=2,
            length_penalty=0.0,
            length_penalty_grid=(0.0, 1.0),
            threads=1,
            examples=5,
        ),
    ),
    # small: a user's corpus of fewer than SMALL_CORPUS pairs. Multi30k's recipe with two
    # encoder layers instead of four, dropout 0.3 and a 2,000-piece vocabulary; bounded by
    # steps and early stopping, 20 minutes only as a safety stop.
    "small": TranslatorPreset(
        model=TranslatorConfig(
            d_model=256,
            num_heads=4,
            d_ff=1024,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dropout=0.3,
            attention_dropout=0.1,
            activation_dropout=0.0,
            max_len=256,
        ),
        train=TranslatorTrainConfig(
            data="multi30k",
            vocab_size=2000,
            max_tokens=2000,
            max_source_tokens=128,
            lr=0.0015,
            warmup=200,
            schedule="linear",
            weight_decay=0.05,
            eval_every=100,
            patience=8,
            max_steps=3000,
            max_minutes=20.0,
            average_last=3,
            beam_size=4,
            length_penalty=0.6,
            length_penalty_grid=(0.6, 0.8, 1.0, 1.2),
            threads=2,
        ),
    ),
    "multi30k": TranslatorPreset(
        # 4 + 2 layers rather than 3 + 3: the same validation BLEU (41.53 against 41.55) and a
        # decoder step about 29 % faster, which every served token pays. Attention dropout 0.1
        # and weight decay 0.05: +0.55 validation BLEU side by side (docs/translation.md).
        model=TranslatorConfig(
            d_model=256,
            num_heads=4,
            d_ff=1024,
            num_encoder_layers=4,
            num_decoder_layers=2,
            dropout=0.1,
            attention_dropout=0.1,
            activation_dropout=0.0,
            max_len=256,
        ),
        train=TranslatorTrainConfig(
            data="multi30k",
            vocab_size=8000,
            max_tokens=5000,
            max_source_tokens=128,
            lr=0.0015,
            warmup=300,
            schedule="linear",
            weight_decay=0.05,
            eval_every=150,
            patience=8,
            # 3,700 steps: what the recorded 54-minute runs reached on 2 Xeon cores (3,689 to
            # 3,776). The run stops there on any machine (about 75 minutes on a slower 2-core
            # one); 120 minutes is only a safety stop
            max_steps=3700,
            max_minutes=120.0,
            average_last=5,
            beam_size=4,
            length_penalty=0.6,
            length_penalty_grid=(0.6, 0.8, 1.0, 1.2),
            threads=2,
        ),
    ),
}


# A user's corpus without --preset gets a preset by its training pairs: below SMALL_CORPUS the
# "small" preset (two encoder layers instead of four, dropout 0.3, a 2,000-piece vocabulary, at
# most 3,000 steps), else "multi30k" (tuned on Multi30k's 29,000 pairs).
SMALL_CORPUS = 20_000


def preset_for(data: str, pairs: int | None = None) -> str:
    """The preset a `--data` value gets when no `--preset` is given: the built-in corpora their
    own; a corpus path by its number of training `pairs` (SMALL_CORPUS)."""
    if data in ("numbers", "multi30k"):
        return data
    return "small" if pairs is not None and pairs < SMALL_CORPUS else "multi30k"
