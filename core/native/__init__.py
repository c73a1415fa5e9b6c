"""Native (C++) compute kernels, built by `make native` into `_decoder*.so` beside this file:
the translator's int8 encoder and decoder step (`src/`), used through
`core.translation.native_model`."""
