"""core.translation on the exported tiny model: batching, continuous batching, streaming,
limits, and no torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InvalidInput, ModelLoadError
from core.translation import BadDecodingSetting, RequestBuilder, SourceTooLong, Translator
from core.translation.spec import read_config
from tests.conftest import ROOT


def test_batched_equals_one_at_a_time(translator: Translator, sample_sources: list[str]) -> None:
    sources = sample_sources[:12]
    together = translator.translate(sources, beam_size=2, num_hypotheses=2)
    for text, batched in zip(sources, together, strict=True):
        [alone] = translator.translate([text], beam_size=2, num_hypotheses=2)
        assert [h.token_ids for h in alone.hypotheses] == [h.token_ids for h in batched.hypotheses]
        assert alone.score == pytest.approx(batched.score, abs=1e-4)
        assert alone.text == batched.text and alone.text


def test_a_request_joins_a_running_batch_and_matches_its_solo_run(
    translator: Translator, sample_sources: list[str]
) -> None:
    # by output length, as greedy decodes them alone: the joining request must finish first
    def steps(text: str) -> int:
        return len(translator.translate([text], beam_size=1)[0].token_ids)

    by_length = sorted(sample_sources, key=steps)
    short, long_ = by_length[0], by_length[-1]
    assert steps(short) + 4 < steps(long_), "the sample has no short and long outputs"
    batch = translator.new_batch()
    batch.add(
        [
            translator.request(long_, id="long", beam_size=1),
            translator.request(by_length[5], id="mid", beam_size=3),
        ]
    )
    for _ in range(4):
        batch.step()
    batch.add([translator.request(short, id="short", beam_size=1)])
    results, order = {}, []
    while len(batch):
        for update in batch.step():
            if update.finished:
                results[update.id] = update.result
                order.append(update.id)
    assert results["short"].joined_step == 4
    assert order.index("short") < order.index("long")
    for rid, text, beam in (("long", long_, 1), ("mid", by_length[5], 3), ("short", short, 1)):
        [solo] = translator.translate([text], beam_size=beam)
        assert solo.token_ids == results[rid].token_ids, rid
        assert solo.score == pytest.approx(results[rid].score, abs=1e-4)


def test_greedy_streaming_pieces_add_up_to_the_translation(
    translator: Translator, sample_sources: list[str]
) -> None:
    updates = list(translator.stream(sample_sources[0], beam_size=1))
    pieces = [u.text for u in updates]
    final = updates[-1].result
    assert updates[-1].finished and not any(u.finished for u in updates[:-1])
    assert "".join(pieces) == final.text
    first_text = next(i for i, p in enumerate(pieces) if p)
    assert first_text < len(updates) - 1  # text arrived before decoding ended
    assert sum(len(u.token_ids) for u in updates) == len(final.token_ids)


def test_too_long_input_names_the_limit(translator: Translator) -> None:
    with pytest.raises(SourceTooLong, match=r"at most 48 source tokens \(max_source_tokens\)"):
        translator.request("dreihundert " * 60)
    assert issubclass(SourceTooLong, InvalidInput)
    with pytest.raises(BadDecodingSetting, match="max_target_tokens"):
        translator.request("vier", max_length=10_000)


def test_huge_input_is_refused_before_tokenizing(
    translator: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A megabyte of text costs no tokenizer time: the character cap (32 per source token)
    refuses it first, naming the limit."""

    def never(text: str) -> list[int]:
        raise AssertionError("tokenized a text over the character cap")

    monkeypatch.setattr(translator.requests.tokenizer, "encode_source", never)
    with pytest.raises(SourceTooLong, match=r"1000000 characters long; .* at most 1536"):
        translator.request("a" * 1_000_000)


@pytest.mark.parametrize(
    ("tokenizer", "words"),
    [
        ("/etc/hostname", "must be a file name in the version folder"),
        ("../../../../etc/hostname", "must be a file name in the version folder"),
        ("outside.model", "resolves outside the version folder"),
    ],
)
def test_tokenizer_outside_the_version_folder(
    version_dir: Path, tmp_path: Path, tokenizer: str, words: str
) -> None:
    """The config's `tokenizer` parameter (a Load override can set it) names a file in the
    version folder and nothing else; a link out of it is refused as well."""
    copy = tmp_path / "translator" / "1"
    copy.mkdir(parents=True)
    (copy / "outside.model").symlink_to(version_dir / "spm.model")
    config = read_config(version_dir.parent)
    config.parameters["tokenizer"].string_value = tokenizer
    with pytest.raises(ModelLoadError, match=words):
        RequestBuilder.load(copy, config)


def test_empty_input_gives_empty_output(translator: Translator) -> None:
    results = translator.translate(["", "  ", "vier"], beam_size=1)
    assert [r.text for r in results[:2]] == ["", ""]
    assert results[2].text


def test_serving_translation_runs_without_torch(version_dir: Path) -> None:
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from serving.models.onnx_step_model import load_translator\n"
        f"t = load_translator(Path({str(version_dir)!r}))\n"
        "print(t.translate(['siebenhundertzwölf'], beam_size=3)[0].text)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    text, leaked = out.stdout.strip().splitlines()
    assert text and leaked == "False"


def test_the_exported_length_penalty_is_the_default(
    translator: Translator, tiny_metrics: dict
) -> None:
    """Export writes the alpha chosen on validation; a request without one gets it, an
    explicit one (0 included) wins."""
    assert translator.spec.default_length_penalty == tiny_metrics["length_penalty"]
    other = Translator(
        translator.model,
        translator.tokenizer,
        dataclasses.replace(translator.spec, default_length_penalty=0.7),
    )
    assert other.request("eins").length_penalty == 0.7
    assert other.request("eins", length_penalty=0.0).length_penalty == 0.0


def test_the_cache_kept_on_the_device_decodes_as_run_does(
    translator: Translator, version_dir: Path, sample_sources: list[str]
) -> None:
    """IO binding (on by itself on CUDA) forced on the CPU: the same tokens and scores through
    joins, departures and beam reordering, and a step that changes no rows keeps the cache
    where the decoder wrote it."""
    import onnxruntime as ort

    from serving.models.onnx_step_model import DeviceCache, load_translator

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    bound = load_translator(version_dir, session_options=opts, providers=["CPUExecutionProvider"])
    assert not bound.model.io_binding  # the default on the CPU
    bound.model.io_binding = True
    sources = sample_sources[:12]
    for beam, rows in ((1, 3), (1, None), (3, 7)):
        want = translator.translate(sources, beam_size=beam, max_rows=rows)
        got = bound.translate(sources, beam_size=beam, max_rows=rows)
        assert [r.token_ids for r in got] == [r.token_ids for r in want], (beam, rows)
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)
    batch = bound.new_batch()
    batch.add([bound.request(s, id=i, beam_size=1) for i, s in enumerate(sources[:2])])
    batch.step()
    batch.step()
    assert isinstance(batch.cache.past_k, DeviceCache)
