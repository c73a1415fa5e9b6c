"""Translate with the typed API: beam search, n-best, and streaming.

.venv/bin/python examples/translate.py [-u 127.0.0.1:8001] [SENTENCE ...]
"""

from __future__ import annotations

import argparse

from serving.client import Client

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("sentences", nargs="*", default=["dreihundertzweiundvierzig", "siebzehn"])
parser.add_argument("-u", "--url", default="127.0.0.1:8001", help="server host:port")
parser.add_argument("--model", default="translator")
args = parser.parse_args()

with Client(args.url) as client:
    for source, t in zip(
        args.sentences,
        client.translate(args.sentences, args.model, beam_size=4, n_best=2),
        strict=True,
    ):
        print(f"{source} -> {t.text}  (score {t.score:.3f}, {t.num_tokens} tokens)")
        for text, score in t.alternatives:
            print(f"    also: {text}  ({score:.3f})")
    print("streamed:", end=" ", flush=True)
    for piece in client.translate_stream(args.sentences[0], args.model):
        print(piece, end="", flush=True)
    print()
