"""Frozen configs of the translator (stored in its checkpoint) and its named presets.

No torch here: the CLI reads the defaults from these dataclasses without importing torch.

Presets (`--preset`, default by `--data`):
- `numbers`: the default `translator` of `make serve`: German number words -> English on the
  built-in corpus; a few minutes on 2 CPU cores (docs/translation.md has the measured numbers).
- `tiny`: seconds; for tests and `build-repository --preset tiny`.
- `multi30k`: the Multi30k de->en recipe (d 256, 4 encoder + 2 decoder layers, joint 8k
  SentencePiece); about an hour on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TranslatorConfig:
    """What rebuilds the network; `model_args` of the checkpoint. D d_model, H num_heads."""

    vocab_size: int
    d_model: int = 256
    num_heads: int = 4
    d_ff: int = 1024
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dropout: float = 0.1  # residual outputs and embeddings
    attention_dropout: float | None = None  # attention probabilities; None = `dropout`
    activation_dropout: float | None = None  # inside the feed-forward; None = `dropout`
    max_len: int = 256  # positions: the longest source or target sequence, BOS/EOS included
    tie_embeddings: bool = True  # source, target embeddings and generator share one matrix
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        assert self.d_model % self.num_heads == 0, (
            f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
        )
        assert self.d_model % 2 == 0, "d_model must be even (sinusoidal encoding)"

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

    data: str = "numbers"  # numbers | multi30k | a corpus path (TSV, or PREFIX.src/PREFIX.tgt)
    src: str = "de"
    tgt: str = "en"
    test_split: str = "test_2016_flickr"  # multi30k test file; the others use their own test
    numbers_train: int = 60000  # numbers corpus: training pairs
    numbers_heldout: int = 1000  # numbers corpus: validation and test pairs, each
    numbers_max_digits: int = 6  # numbers corpus: up to 999,999
    vocab_size: int = 8000  # SentencePiece pieces (joint source + target)
    spm_model: str = "unigram"  # unigram | bpe
    max_source_tokens: int = 128  # longer training pairs are dropped; the served limit
    max_tokens: int = 4096  # tokens (source + target, padding included) per batch
    max_steps: int = 100000
    max_minutes: float = 0.0  # wall-clock budget for training; 0 = none
    lr: float = 1e-3  # peak learning rate, reached after `warmup` steps
    warmup: int = 4000
    # after warm-up: "inverse_sqrt" (lr * sqrt(warmup / step)) or "linear" (down to 0 at the
    # end of the run: max_steps or, when set, the max_minutes budget, whichever comes first)
    schedule: str = "inverse_sqrt"
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    # Subword regularization (Kudo 2018): every epoch, each training sentence is segmented
    # afresh by sampling from the SentencePiece model (unigram: smoothing alpha, over all
    # segmentations; bpe: BPE-dropout with this probability). 0 = the one best segmentation.
    subword_alpha: float = 0.0
    # Multi30k only: training pairs from these source languages into the same targets too
    # (multi-source augmentation: the same captions in French, say). () = none.
    extra_sources: tuple[str, ...] = ()
    # R-Drop (Liang et al. 2021): each batch runs twice and the loss adds this weight times
    # the symmetric KL between the two dropout samples (fairseq's --rdrop-alpha). 0 = off.
    rdrop_alpha: float = 0.0
    clip: float = 1.0  # gradient-norm clip
    eval_every: int = 1000  # steps between validation losses (and averaging snapshots)
    patience: int = 6  # evaluations without a better validation loss before stopping
    average_last: int = 5  # checkpoint averaging over the last N snapshots
    # What keeps the average of the last N or the snapshot of lowest validation loss: "bleu"
    # (greedy BLEU on the validation split, the average on ties) or "loss" (validation loss).
    select_by: str = "bleu"
    beam_size: int = 4
    length_penalty: float = 0.6  # GNMT alpha at evaluation (and the served default)
    # Alphas tried on the validation split after training; the best by BLEU replaces
    # `length_penalty` (ties: the first). Empty: keep `length_penalty`.
    length_penalty_grid: tuple[float, ...] = ()
    eval_batch_rows: int = 64  # decoder rows during evaluation
    bf16: bool = False  # bf16 autocast on CPU (AMX) or CUDA
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    examples: int = 20  # example translations written next to metrics.json

    def __post_init__(self) -> None:
        assert self.schedule in SCHEDULES, (
            f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}"
        )
        assert self.select_by in SELECT_BY, (
            f"select_by {self.select_by!r} is not one of {', '.join(SELECT_BY)}"
        )


@dataclass(frozen=True)
class Preset:
    model: dict[str, object]
    train: dict[str, object]


PRESETS: dict[str, Preset] = {
    "numbers": Preset(
        model={
            "d_model": 128,
            "num_heads": 4,
            "d_ff": 512,
            "num_encoder_layers": 2,
            "num_decoder_layers": 2,
            "dropout": 0.1,
            "max_len": 128,
        },
        train={
            "data": "numbers",
            "numbers_train": 60000,
            "vocab_size": 256,
            "max_tokens": 3000,
            "max_source_tokens": 64,
            "lr": 2e-3,
            "warmup": 400,
            "eval_every": 250,
            "patience": 4,
            "max_steps": 6000,
            "max_minutes": 6.0,
            "average_last": 4,
            "beam_size": 4,
            "length_penalty": 0.0,
            "threads": 1,
        },
    ),
    # tiny: 120 steps, about 6 s here; the 10-minute budget only guards against a stalled
    # machine (a budget that cut the steps short would make tests depend on machine load).
    "tiny": Preset(
        model={
            "d_model": 64,
            "num_heads": 4,
            "d_ff": 128,
            "num_encoder_layers": 1,
            "num_decoder_layers": 2,
            "dropout": 0.0,
            "max_len": 64,
        },
        train={
            "data": "numbers",
            "numbers_train": 3000,
            "numbers_heldout": 100,
            "vocab_size": 96,
            "max_tokens": 2000,
            "max_source_tokens": 48,
            "lr": 3e-3,
            "warmup": 60,
            "eval_every": 60,
            "max_steps": 120,
            "max_minutes": 10.0,
            "average_last": 2,
            "beam_size": 2,
            "length_penalty": 0.0,
            "length_penalty_grid": (0.0, 1.0),
            "threads": 1,
            "examples": 5,
        },
    ),
    "multi30k": Preset(
        # 4 + 2 layers rather than 3 + 3: the same validation BLEU (41.53 against 41.55) and a
        # decoder step about 29 % faster, which every served token pays. Attention dropout 0.1
        # and weight decay 0.05: +0.55 validation BLEU side by side (docs/translation.md).
        model={
            "d_model": 256,
            "num_heads": 4,
            "d_ff": 1024,
            "num_encoder_layers": 4,
            "num_decoder_layers": 2,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "activation_dropout": 0.0,
            "max_len": 256,
        },
        train={
            "data": "multi30k",
            "vocab_size": 8000,
            "max_tokens": 5000,
            "max_source_tokens": 128,
            "lr": 1.5e-3,
            "warmup": 300,
            "schedule": "linear",
            "weight_decay": 0.05,
            "eval_every": 150,
            "patience": 8,
            "max_minutes": 54.0,
            "average_last": 5,
            "beam_size": 4,
            "length_penalty": 0.6,
            "length_penalty_grid": (0.6, 0.8, 1.0, 1.2),
            "threads": 2,
        },
    ),
}


def preset_for(data: str) -> str:
    """The preset a `--data` value gets when no `--preset` is given."""
    return "numbers" if data == "numbers" else "multi30k"


def resolve(
    preset: str, model_overrides: dict[str, object], train_overrides: dict[str, object]
) -> tuple[dict[str, object], TranslatorTrainConfig]:
    """Preset values, then explicit overrides (None = not given). The model arguments stay a
    dict: `vocab_size` is known once the tokenizer is trained."""
    p = PRESETS[preset]
    model = {**p.model, **{k: v for k, v in model_overrides.items() if v is not None}}
    train = {**p.train, **{k: v for k, v in train_overrides.items() if v is not None}}
    return model, TranslatorTrainConfig(**train)
