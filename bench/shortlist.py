"""The vocabulary-shortlist lever (issue 30, item 4), measured rather than shipped:

- `cooccurrence_shortlist`: a lexical shortlist as Marian and CTranslate2's vocabulary maps
  use one, from a training corpus: every source token's `per_token` likeliest target tokens
  (p(target | source) by sentence co-occurrence) plus the `frequent` commonest targets and EOS.
  `union_sizes` gives how many tokens a batch of sentences would keep (the union of its
  sentences' lists, as CTranslate2 takes it) and how many reference tokens it would miss.
- `shortlist_step`: the shipped int8 decoder step with its output projection restricted to an
  input `vocab_ids` [C]: the int8 weight rows gathered each step, so the same graph serves any
  batch's union. onnxruntime can no longer pre-pack that weight, which is the cost measured
  against the smaller projection and log-softmax (`bench.decoder_levers`).

Run as a module, it puts the shortlisted step into the real decoding loop and measures what
the lever gives end to end, on the test split, against the shipped int8 model in the same
process (the two taking turns, medians of per-repeat ratios):

    python -m bench.shortlist --checkpoint runs/m30k-steps \
        --model /tmp/m30k-repo/translator_int8 [--per-token 20,50] [--frequent 100,300] \
        [--batches 8,32] [--repeats 5] [--out FILE.json]

Each group of sentences gets its union of lists, as CTranslate2's vocabulary map does per
batch; the step's [R, C] log-probabilities are scattered back into [R, V] (the rest -inf), so
that the search is unchanged; that scatter is counted against the lever. BLEU is the test
split's, greedy and beam 4 in groups of 8.

Legend as export/decoder_step.py: R rows, D model width, V vocabulary, C shortlist length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sacrebleu
import torch
from onnx import TensorProto, helper, numpy_helper

from bench.decoder_step import _session
from bench.translator_engines import SeqserveEngine
from core.translation import graphs as graph_names
from core.translation.graphs import CacheArray, StepModel, decoder_feeds, layered_outputs
from core.translation.tokenizer import Tokenizer
from export.decoder_step import DecoderStep
from export.quantize import quantize_int8
from export.translator import untie_initializers
from export.translator_graphs import export_step
from training.data.parallel import load_corpus
from training.models.transformer import EncoderDecoder
from training.train_translator import load_translator_checkpoint


def cooccurrence_shortlist(
    pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, per_token: int, frequent: int
) -> tuple[np.ndarray, np.ndarray]:
    """(per source token its `per_token` likeliest target tokens [V, per_token], the
    `frequent` commonest target tokens with EOS [F]); sentence-level counts."""
    vocab = tokenizer.vocab_size
    together = np.zeros((vocab, vocab), np.float32)  # [V source, V target] sentence counts
    source_count = np.zeros(vocab)
    target_count = np.zeros(vocab)
    for src, tgt in pairs:
        s, t = np.unique(tokenizer.encode(src)), np.unique(tokenizer.encode(tgt))
        together[np.ix_(s, t)] += 1
        source_count[s] += 1
        target_count[t] += 1
    likely = together / np.maximum(source_count, 1)[:, None]  # p(target | source)
    per_source = np.argsort(-likely, axis=1, kind="stable")[:, :per_token]
    common = np.argsort(-target_count, kind="stable")[:frequent]
    return per_source, np.union1d(common, [tokenizer.eos_id])


def union_sizes(
    pairs: Sequence[tuple[str, str]],
    tokenizer: Tokenizer,
    shortlist: tuple[np.ndarray, np.ndarray],
    batch: int,
) -> tuple[list[int], float]:
    """(the shortlist length C of each batch of `batch` consecutive pairs, the share of the
    pairs' reference tokens outside their own sentence's list)."""
    per_source, common = shortlist
    lists, missed, total = [], 0, 0
    for src, tgt in pairs:
        ids = np.union1d(common, per_source[tokenizer.encode(src)].ravel())
        reference = tokenizer.encode(tgt)
        missed += int((~np.isin(reference, ids)).sum())
        total += len(reference)
        lists.append(ids)
    sizes = [
        len(np.unique(np.concatenate(lists[i : i + batch])))
        for i in range(0, len(lists) - batch + 1, batch)
    ]
    return sizes, missed / max(total, 1)


class _HiddenStep(DecoderStep):
    """The decoder step stopped before its output projection: hidden [R, D] and the caches."""

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past_mask: torch.Tensor,
        src_mask: torch.Tensor,
        *caches: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:  # the argument names are the export's dynamic-shape keys
        hidden, present = self.hidden(tokens, positions, past_mask, src_mask, *caches)
        return (hidden, *(k for k, _ in present), *(v for _, v in present))


def shortlist_step(model: EncoderDecoder, folder: Path) -> Path:
    """folder/shortlist_int8.onnx: the shipped int8 step (every layer's MatMuls quantised as
    `export --quantize int8` does) whose log_probs [R, C] cover only the input vocab_ids [C]:
    Gather(int8 rows of the projection) -> Transpose -> MatMulInteger with the dynamically
    quantised hidden state -> scale, bias -> LogSoftmax over the C tokens."""
    layers = model.config.num_decoder_layers
    outputs = ["hidden", *graph_names.decoder_outputs(layers)[1:]]
    step = _HiddenStep(model).eval()
    export_step(step, model, folder / "hidden.onnx", outputs)
    untie_initializers(folder / "hidden.onnx", folder / "hidden.untied.onnx")
    quantize_int8(folder / "hidden.untied.onnx", folder / "hidden.int8.onnx")
    graph = onnx.load(str(folder / "hidden.int8.onnx"))
    w = step.w_out.t().numpy()  # [V, D]: a token's row is contiguous, so a Gather copies rows
    scale = np.float32(np.abs(w).max() / 127)  # one symmetric scale, as QInt8 weights get
    g = graph.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.round(w / scale).astype(np.int8), "out_rows_q"),
            numpy_helper.from_array(np.array(scale, np.float32), "out_scale"),
            numpy_helper.from_array(step.b_out.numpy(), "out_bias"),
        ]
    )
    g.input.append(helper.make_tensor_value_info("vocab_ids", TensorProto.INT64, ["shortlist"]))
    node = helper.make_node
    g.node.extend(
        [
            node("Gather", ["out_rows_q", "vocab_ids"], ["sl_rows"], axis=0),  # [C, D] int8
            node("Transpose", ["sl_rows"], ["sl_w"], perm=[1, 0]),  # [D, C]
            node("Gather", ["out_bias", "vocab_ids"], ["sl_bias"], axis=0),  # [C]
            node("DynamicQuantizeLinear", ["hidden"], ["h_q", "h_scale", "h_zero"]),
            node("MatMulInteger", ["h_q", "sl_w", "h_zero"], ["sl_acc"]),  # [R, C] int32
            node("Cast", ["sl_acc"], ["sl_accf"], to=TensorProto.FLOAT),
            node("Mul", ["h_scale", "out_scale"], ["sl_scale"]),
            node("Mul", ["sl_accf", "sl_scale"], ["sl_scaled"]),
            node("Add", ["sl_scaled", "sl_bias"], ["sl_logits"]),
            node("LogSoftmax", ["sl_logits"], ["log_probs"], axis=-1),  # [R, C]
        ]
    )
    hidden_out = next(o for o in g.output if o.name == "hidden")
    index = list(g.output).index(hidden_out)
    g.output.remove(hidden_out)
    g.output.insert(
        index,
        helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["rows", "shortlist"]),
    )
    path = folder / "shortlist_int8.onnx"
    onnx.save(graph, str(path))
    return path


class ShortlistedStep:
    """An OnnxStepModel's step through the shortlisted graph, for the tokens `vocab_ids` set
    before each group: log_probs come back [R, V], -inf outside the list."""

    def __init__(self, model: StepModel, path: Path, vocab: int) -> None:
        self.model, self.session, self.vocab = model, _session(str(path)), vocab
        self.vocab_ids = np.arange(vocab)

    def __call__(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        past_k: CacheArray,
        past_v: CacheArray,
        past_mask: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        src_mask: np.ndarray,
    ) -> tuple[np.ndarray, CacheArray, CacheArray]:
        feeds = decoder_feeds(
            tokens, positions, past_k, past_v, past_mask, cross_k, cross_v, src_mask
        )
        layers = self.model.num_layers
        outputs = self.session.run(
            graph_names.decoder_outputs(layers), feeds | {"vocab_ids": self.vocab_ids}
        )
        log_probs, present_k, present_v = layered_outputs(outputs, layers)  # [R, C]
        full = np.full((len(log_probs), self.vocab), -np.inf, np.float32)  # [R, V]
        full[:, self.vocab_ids] = log_probs
        return full, present_k, present_v


def group_ids(lists: tuple[np.ndarray, np.ndarray], sources: Sequence[list[int]]) -> np.ndarray:
    """The vocab_ids [C] of a group of sources (token ids): the union of their lists."""
    per_source, common = lists
    return np.union1d(common, per_source[np.concatenate(sources)].ravel()).astype(np.int64)


class _Engines:
    """The shipped int8 model and the same model through the shortlisted step, in process."""

    def __init__(self, model_dir: Path, step_path: Path, vocab: int, max_length: int) -> None:
        self.engines = {
            "int8": SeqserveEngine("int8", model_dir, 1),
            "shortlist": SeqserveEngine("int8", model_dir, 1),
        }
        short = self.engines["shortlist"].translator.model
        self.step = ShortlistedStep(short, step_path, vocab)
        short.step = self.step  # type: ignore[method-assign]
        self.max_length = max_length
        self.lists: tuple[np.ndarray, np.ndarray] | None = None

    def translate(self, name: str, group: list[list[int]], beam: int) -> list:
        if name == "shortlist" and self.lists is not None:
            self.step.vocab_ids = group_ids(self.lists, group)
        return self.engines[name].translate(group, beam, self.max_length)

    def speed(
        self, sources: list[list[int]], beam: int, batch: int, repeats: int
    ) -> dict[str, object]:
        """Target tokens/s of each engine over `sources` in groups of `batch`, taking turns."""
        speeds: dict[str, list[float]] = {name: [] for name in self.engines}
        for name in self.engines:  # warm-up: the first calls of a session are slower
            self.translate(name, sources[:batch], beam)
        for _ in range(repeats):
            for name in self.engines:
                start, tokens = time.perf_counter(), 0
                for i in range(0, len(sources), batch):
                    out = self.translate(name, sources[i : i + batch], beam)
                    tokens += sum(len(o.ids or []) for o in out)
                speeds[name].append(tokens / (time.perf_counter() - start))
        ratios = [s / p for s, p in zip(speeds["shortlist"], speeds["int8"], strict=True)]
        assert self.lists is not None
        lengths = [
            len(group_ids(self.lists, sources[i : i + batch]))
            for i in range(0, len(sources), batch)
        ]
        return {
            "beam": beam,
            "batch": batch,
            "int8_tokens_per_s": round(statistics.median(speeds["int8"])),
            "shortlist_tokens_per_s": round(statistics.median(speeds["shortlist"])),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
            "list_length_median": int(statistics.median(lengths)),
        }

    def bleu(self, name: str, sources: list[list[int]], refs: list[str], beam: int) -> float:
        """sacreBLEU of one engine on the test split, in groups of 8."""
        hyps = []
        for i in range(0, len(sources), 8):
            hyps += [o.text for o in self.translate(name, sources[i : i + 8], beam)]
        return round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="the int8 model's folder")
    parser.add_argument("--per-token", default="20,50")
    parser.add_argument("--frequent", default="100,300")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=118)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    model, tc, spm_bytes, _ = load_translator_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.from_bytes(spm_bytes, tc.source_normalization)
    corpus = load_corpus(tc.data, tc.src, tc.tgt, tc.seed, tc.test_split)
    sources = [tokenizer.encode_source(s) for s, _ in corpus["test"]]
    refs = [t for _, t in corpus["test"]]
    result: dict = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "load_avg_start": list(os.getloadavg()),
        "lists": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = shortlist_step(model, Path(tmp))
        engines = _Engines(args.model, path, tokenizer.vocab_size, args.max_length)
        sizes = zip(args.per_token.split(","), args.frequent.split(","), strict=True)
        for per_token, frequent in ((int(k), int(f)) for k, f in sizes):
            engines.lists = cooccurrence_shortlist(corpus["train"], tokenizer, per_token, frequent)
            entry: dict = {"per_token": per_token, "frequent": frequent, "speed": [], "bleu": {}}
            for beam in (1, 4):
                for batch in (int(b) for b in args.batches.split(",")):
                    row = engines.speed(sources[: args.sentences], beam, batch, args.repeats)
                    entry["speed"].append(row)
                    print(json.dumps({"per_token": per_token, "frequent": frequent} | row))
            for beam in (1, 4):
                for name in engines.engines:
                    entry["bleu"][f"beam{beam}_{name}"] = engines.bleu(name, sources, refs, beam)
            print(json.dumps({"per_token": per_token, "frequent": frequent} | entry["bleu"]))
            result["lists"].append(entry)
    result["load_avg_end"] = list(os.getloadavg())
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
