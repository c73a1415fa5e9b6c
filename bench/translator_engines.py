"""The in-process engines of the translator benchmark, one interface: translate a group of
sentences (one batch) with a beam size and a maximum length, return ids and text per sentence.

- `SeqserveEngine`: `core.translation.Translator` on the exported model as the server loads it
  (the ONNX graphs with exactly the server's session options, 1 intra-op and 1 inter-op thread
  by default, or the native translator when the config's `runtime` chooses it);
- `TorchUncached`: PyTorch eager, the decoder re-run over the whole prefix at every step
  (`training.decoding.greedy_decode`, the Annotated-Transformer style);
- `TorchCached`: PyTorch eager with a key/value cache (`EncoderDecoder.decode_step`);
  both beam search with serving's search rule (`core.translation.search.BeamState`, length
  penalty 0), so beam results can be compared token for token;
- `CTranslate2Engine`: the checkpoint converted by `bench.ctranslate2_convert`, fp32 or int8.

Every engine decodes one batch as given (the benchmark builds the same groups for all), starts
from BOS, stops a sentence at EOS or after `max_length` target tokens (EOS excluded).
Legend: B batch, S source length, L decoder layers, H heads, K head width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.translation import native_model
from core.translation.tokenizer import Tokenizer


@dataclass
class Output:
    ids: list[int] | None  # target ids (EOS excluded); None when the engine gives text only
    text: str


class Engine(Protocol):
    name: str
    beams: tuple[int, ...]  # beam sizes it supports
    info: dict[str, Any]  # threads, model, compute type: recorded in the JSON

    def translate(self, sources: list[list[int]], beam: int, max_length: int) -> list[Output]:
        """`sources`: token ids ending with EOS, one list per sentence of the batch."""
        ...


class SeqserveEngine:
    """What the server runs, in process: tokenized ids go in through `DecodeRequest`s."""

    beams = (1, 4)

    def __init__(
        self, name: str, model_dir: Path, version: int, runtime: str | None = None
    ) -> None:
        """`runtime`: the config's `runtime` overridden ("onnx": the graphs, "native")."""
        from core.translation.spec import read_config
        from serving.models.onnx_model import session_options
        from serving.models.onnx_step_model import load_translator
        from serving.settings import Settings

        config = read_config(model_dir)
        if runtime is not None:
            config.parameters["runtime"].string_value = runtime
        settings = Settings(model_repository=model_dir.parent)
        self.name = name
        self.translator = load_translator(
            model_dir / str(version),
            config,
            session_options(config, settings),
            ["CPUExecutionProvider"],
        )
        model = self.translator.model
        self.info = {
            "model": str(model_dir / str(version)),
            **native_model.runtime_of(model),
            "intra_op_threads": settings.intra_op_threads,
            "inter_op_threads": settings.inter_op_threads,
        }

    def translate(self, sources: list[list[int]], beam: int, max_length: int) -> list[Output]:
        from core.translation import DecodeRequest

        requests = [DecodeRequest(i, src, beam, max_length) for i, src in enumerate(sources)]
        # the whole group at once, as the other engines decode it: the model's row cap
        # (max_batch_size, 64) would let only 16 of 32 beam-4 sentences in at a time
        results = self.translator.run(requests, max_rows=len(requests) * beam)
        return [Output(r.token_ids, r.text) for r in results]


class _Torch:
    beams = (1, 4)

    def __init__(self, name: str, model: Any, tokenizer: Tokenizer) -> None:
        import torch

        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.torch = torch
        self.info = {
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        }

    def _src(self, sources: list[list[int]]) -> Any:
        """Right-padded source ids [B, S] int64."""
        width = max(len(s) for s in sources)
        pad = self.model.config.pad_id
        return self.torch.tensor([s + [pad] * (width - len(s)) for s in sources])  # [B, S]

    def _encode(self, sources: list[list[int]]) -> tuple[Any, Any, Any]:
        """(src [B, S], src_mask [B, S] bool, memory [B, S, D]); call in inference mode."""
        src = self._src(sources)  # [B, S]
        src_mask = src != self.model.config.pad_id  # [B, S]
        return src, src_mask, self.model.encode(src, src_mask.unsqueeze(1))  # memory [B, S, D]

    def _outputs(self, rows: list[list[int]]) -> list[Output]:
        return [Output(r, self.tokenizer.decode(r)) for r in rows]

    def _beam(
        self, sources: list[list[int]], beam: int, max_length: int, cached: bool
    ) -> list[Output]:
        """Beam search over the batch: every sentence keeps `beam` decoder rows (R rows in
        all); a finished sentence's rows leave the batch. Uncached: the decoder re-runs over
        the whole prefix each step; cached: one `decode_step` per token, the cache reordered
        by the surviving rows' parents."""
        import numpy as np

        from core.translation.search import BeamState
        from training.models.masks import subsequent_mask

        torch, m = self.torch, self.model
        c = m.config
        with torch.inference_mode():
            src, src_mask, memory = self._encode(sources)  # [B, S], [B, S], [B, S, D]
            b = src.size(0)
            states = [BeamState(beam, max_length, 0.0, c.eos_id) for _ in range(b)]
            rows = torch.arange(b).repeat_interleave(beam)  # [R] sentence of each row
            ys = torch.full((b * beam, 1), c.bos_id, dtype=torch.long)  # [R, 1]
            if cached:
                cross_k, cross_v = m.cross_kv(memory)  # [L, B, H, S, K] each
                cross_k, cross_v = cross_k[:, rows], cross_v[:, rows]  # [L, R, H, S, K]
                past_k = past_v = memory.new_zeros(
                    c.num_decoder_layers, b * beam, c.num_heads, 0, c.head_dim
                )  # [L, R, H, 0, K]
            alive = list(range(b))
            for t in range(max_length):
                n = ys.size(0)
                if cached:
                    log_probs, k, v = m.decode_step(
                        ys[:, -1:],
                        torch.full((n, 1), t, dtype=torch.long),
                        past_k,
                        past_v,
                        torch.ones(n, t, dtype=torch.bool),
                        cross_k,
                        cross_v,
                        src_mask[rows],
                    )  # [R, V], [L, R, H, t+1, K] x2
                else:
                    tgt_mask = subsequent_mask(t + 1, src.device).expand(n, -1, -1)  # [R, T, T]
                    hidden = m.decode(
                        memory[rows], src_mask[rows].unsqueeze(1), ys, tgt_mask
                    )  # [R, T, D]
                    log_probs = m.generator(hidden[:, -1])  # [R, V]
                scores = log_probs.float().numpy()
                keep: list[int] = []
                tokens: list[int] = []
                still = []
                for j, i in enumerate(alive):
                    parents, nxt = states[i].advance(scores[j * beam : (j + 1) * beam])
                    if not states[i].done:
                        keep.extend((j * beam + parents).tolist())
                        tokens.extend(nxt.tolist())
                        still.append(i)
                if not still:
                    break
                idx = torch.from_numpy(np.asarray(keep, np.int64))  # [R'] surviving rows
                ys = torch.cat([ys[idx], torch.tensor(tokens).unsqueeze(1)], dim=1)  # [R', T+1]
                rows = rows[idx]
                if cached:
                    past_k, past_v = k[:, idx], v[:, idx]  # [L, R', H, t+1, K]
                    cross_k, cross_v = cross_k[:, idx], cross_v[:, idx]
                alive = still
        return self._outputs([s.best(1)[0].token_ids if s.finished else [] for s in states])


class TorchUncached(_Torch):
    """Tutorial-style greedy: every step runs the decoder over the whole prefix (no cache)."""

    def translate(self, sources: list[list[int]], beam: int, max_length: int) -> list[Output]:
        from training.decoding import greedy_decode

        if beam > 1:
            return self._beam(sources, beam, max_length, cached=False)
        with self.torch.inference_mode():
            return self._outputs(greedy_decode(self.model, self._src(sources), max_length))


class TorchCached(_Torch):
    """Greedy with a key/value cache: encoder and cross keys/values once, then one
    `decode_step` per token over the cached prefix. Finished rows ride along (padded) until
    the whole batch is done, as in the uncached reference."""

    def translate(self, sources: list[list[int]], beam: int, max_length: int) -> list[Output]:
        if beam > 1:
            return self._beam(sources, beam, max_length, cached=True)
        torch, m = self.torch, self.model
        c = m.config
        with torch.inference_mode():
            src, src_mask, memory = self._encode(sources)  # [B, S], [B, S], [B, S, D]
            b = src.size(0)
            cross_k, cross_v = m.cross_kv(memory)  # [L, B, H, S, K] each
            past_k = memory.new_zeros(
                c.num_decoder_layers, b, c.num_heads, 0, c.head_dim
            )  # [L, B, H, 0, K]
            past_v = past_k
            past_mask = torch.zeros(b, 0, dtype=torch.bool)  # [B, 0]
            tokens = torch.full((b, 1), c.bos_id, dtype=torch.long)  # [B, 1]
            done = torch.zeros(b, dtype=torch.bool)  # [B]
            steps = []
            for t in range(max_length):
                positions = torch.full((b, 1), t, dtype=torch.long)  # [B, 1]
                log_probs, past_k, past_v = m.decode_step(
                    tokens, positions, past_k, past_v, past_mask, cross_k, cross_v, src_mask
                )  # [B, V], [L, B, H, t+1, K] x2
                past_mask = torch.ones(b, t + 1, dtype=torch.bool)  # [B, t+1]
                nxt = log_probs.argmax(dim=-1)  # [B]
                nxt = torch.where(done, torch.full_like(nxt, c.pad_id), nxt)
                steps.append(nxt)
                done |= nxt == c.eos_id
                if bool(done.all()):
                    break
                tokens = nxt.unsqueeze(1)  # [B] -> [B, 1]
            ys = torch.stack(steps, dim=1).tolist()  # [B, T]
        rows = [
            r[: r.index(c.eos_id)] if c.eos_id in r else [t for t in r if t != c.pad_id] for r in ys
        ]
        return self._outputs(rows)


class CTranslate2Engine:
    """`ctranslate2.Translator` on `threads` threads (inter_threads=1, intra_threads=threads;
    one unless told). The model is
    fed SentencePiece pieces (EOS included) and answers pieces; length_penalty 0, as seqserve's
    default, so beam search ranks by the plain sum of log-probabilities in both."""

    beams = (1, 4)

    def __init__(
        self,
        name: str,
        model_dir: Path,
        compute_type: str,
        tokenizer: Tokenizer,
        threads: int = 1,
    ) -> None:
        import ctranslate2

        self.name, self.tokenizer = name, tokenizer
        self.translator = ctranslate2.Translator(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            inter_threads=1,
            intra_threads=threads,
        )
        self.info = {
            "compute_type": self.translator.compute_type,  # what it really runs
            "inter_threads": 1,
            "intra_threads": threads,
        }

    def translate(self, sources: list[list[int]], beam: int, max_length: int) -> list[Output]:
        tok = self.tokenizer
        results = self.translator.translate_batch(
            [tok.pieces(s) for s in sources],
            beam_size=beam,
            max_decoding_length=max_length,
            length_penalty=0.0,
            num_hypotheses=1,
        )
        out = []
        for r in results:
            ids = [tok.sp.piece_to_id(p) for p in r.hypotheses[0]]
            out.append(Output(ids, tok.decode(ids)))
        return out


def load_torch(checkpoint_dir: Path) -> tuple[Any, Tokenizer]:
    """The checkpoint's model (eval mode) and its tokenizer; torch on 1 thread."""
    import torch

    from training.train_translator import load_translator_checkpoint

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started: keep what is there
        pass
    model, tc, tokenizer_bytes, _ = load_translator_checkpoint(checkpoint_dir)
    return model, Tokenizer.from_bytes(tokenizer_bytes, tc.source_normalization)
