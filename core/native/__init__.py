"""Native (C++) compute kernels, built by `make native` into `_decoder*.so` beside this file:
the translator's int8 encoder and decoder step (`src/`), used through
`core.translation.native_model`, and beam search's ranking. `decoder` is the extension module,
None when it is not built (everything then runs without it)."""

from types import ModuleType

decoder: ModuleType | None
try:
    from core.native import _decoder as decoder
except ImportError:  # not built
    decoder = None
