"""Native (C++) compute kernels, built by `make native` into `_decoder*.so` beside this file:
the translator's int8 encoder and decoder step (`src/`), used through
`core.translation.native_model`, and beam search's ranking. `decoder` is the extension module,
None when it is not built (everything then runs without it).

`SEQSERVE_NATIVE_ISA` caps the vector instruction set it runs (`src/simd.h`); a name it does
not know caps nothing, with a warning here."""

import os
import warnings
from types import ModuleType

decoder: ModuleType | None
try:
    from core.native import _decoder as decoder
except ImportError:  # not built
    decoder = None

_cap = os.environ.get("SEQSERVE_NATIVE_ISA")
if decoder is not None and _cap is not None and _cap.lower() not in decoder.ISA_NAMES:
    warnings.warn(
        f"SEQSERVE_NATIVE_ISA={_cap!r} is none of {decoder.ISA_NAMES}: the native code is not "
        f"capped (it runs {decoder.isa()})",
        RuntimeWarning,
        stacklevel=2,
    )
