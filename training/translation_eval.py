"""Test-set evaluation of a translator: sacreBLEU and chrF (default settings: detokenized,
cased), exact-match accuracy, decoding time, and a file of example translations."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import sacrebleu

from core.translation import Translator

Pair = tuple[str, str]


def evaluate(
    translator: Translator,
    pairs: Sequence[Pair],
    beam_size: int,
    length_penalty: float,
    max_rows: int,
) -> tuple[dict[str, object], list[str]]:
    """Translate the sources with beam search; return (metrics, hypotheses)."""
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    start = time.perf_counter()
    results = translator.translate(
        sources, beam_size=beam_size, length_penalty=length_penalty, max_rows=max_rows
    )
    seconds = time.perf_counter() - start
    hyps = [r.text for r in results]
    bleu_metric, chrf_metric = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    bleu = bleu_metric.corpus_score(hyps, [refs])
    chrf = chrf_metric.corpus_score(hyps, [refs])
    tokens = sum(len(r.token_ids) + 1 for r in results)
    metrics: dict[str, object] = {
        "bleu": round(bleu.score, 2),
        "chrf": round(chrf.score, 2),
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
        "exact_match": round(sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs), 4),
        "sentences": len(refs),
        "beam_size": beam_size,
        "length_penalty": length_penalty,
        "decode_seconds": round(seconds, 2),
        "decode_tokens_per_second": round(tokens / seconds, 1),
    }
    return metrics, hyps


def choose_length_penalty(
    translator: Translator,
    pairs: Sequence[Pair],
    beam_size: int,
    grid: Sequence[float],
    max_rows: int,
) -> tuple[float, dict[str, float]]:
    """The GNMT alpha of `grid` with the best BLEU on `pairs` (validation: never the test
    split), the first on ties; and every alpha's BLEU, keyed by the alpha as text."""
    bleu = {
        str(alpha): float(evaluate(translator, pairs, beam_size, alpha, max_rows)[0]["bleu"])
        for alpha in grid
    }
    best = max(grid, key=lambda alpha: (bleu[str(alpha)], -grid.index(alpha)))
    return best, bleu


def write_examples(path: Path, pairs: Sequence[Pair], hyps: Sequence[str], n: int) -> None:
    """The first n test sentences: source, reference, hypothesis, and whether they match."""
    lines = []
    for (src, ref), hyp in list(zip(pairs, hyps, strict=True))[:n]:
        mark = "=" if hyp == ref else "x"
        lines += [f"SRC  {src}", f"REF  {ref}", f"HYP{mark} {hyp}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
