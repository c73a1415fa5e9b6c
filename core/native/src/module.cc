// The Python module `core.native._decoder`: the native encoder and decoder step, the int8
// product on its own (tests), and the choice of int8 kernel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "encoder.h"
#include "gemm.h"
#include "step.h"
#include "weights.h"

namespace py = pybind11;
using seqserve::decoder::Encoder;
using seqserve::decoder::Floats;
using seqserve::decoder::Int8Matrix;
using seqserve::decoder::Step;

PYBIND11_MODULE(_decoder, m) {
  m.doc() = "The translator's encoder and decoder step in native code (int8 products).";
  py::class_<Step>(m, "Step")
      .def(py::init<const py::dict&, int, int, bool, const std::string&, float>(),
           py::arg("weights"), py::arg("num_layers"), py::arg("num_heads"), py::arg("norm_first"),
           py::arg("activation"), py::arg("eps"))
      .def_property_readonly("vocab", &Step::vocab)
      .def_property_readonly("num_layers", &Step::num_layers)
      .def_property_readonly("num_heads", &Step::num_heads)
      .def("step", &Step::step, py::arg("tokens"), py::arg("positions"), py::arg("past_mask"),
           py::arg("src_mask"), py::arg("past_k"), py::arg("past_v"), py::arg("cross_k"),
           py::arg("cross_v"), py::arg("past_rows") = py::none(), py::arg("past_start") = 0,
           py::arg("cross_rows") = py::none(), py::arg("cross_start") = 0);
  py::class_<Encoder>(m, "Encoder")
      .def(py::init<const py::dict&, int, int, int, bool, const std::string&, float>(),
           py::arg("weights"), py::arg("num_layers"), py::arg("decoder_layers"),
           py::arg("num_heads"), py::arg("norm_first"), py::arg("activation"), py::arg("eps"))
      .def("encode", &Encoder::encode, py::arg("src_ids"), py::arg("src_mask"));
  py::class_<Int8Matrix>(m, "Int8Matrix")
      .def(py::init([](const Floats& w, const Floats& b) {
             if (w.ndim() != 2 || b.ndim() != 1 || b.shape(0) != w.shape(1))
               throw std::invalid_argument("w [K, N] and b [N] expected");
             return Int8Matrix(w.data(), b.data(), static_cast<int>(w.shape(0)),
                               static_cast<int>(w.shape(1)));
           }),
           py::arg("w"), py::arg("b"))
      .def(
          "__call__",
          [](const Int8Matrix& self, const Floats& x) {
            if (x.ndim() != 2 || x.shape(1) != self.k())
              throw std::invalid_argument("x [M, K] expected");
            const int rows = static_cast<int>(x.shape(0));
            py::array_t<float> y({rows, self.n()});
            std::vector<std::uint8_t> scratch;
            self.apply(x.data(), rows, self.k(), y.mutable_data(), self.n(), scratch);
            return y;
          },
          py::arg("x"), "x [M, K] @ W + b with int8 products");
  m.def("kernel", &seqserve::decoder::kernel_name, "the int8 kernel in use");
  m.def("kernels", &seqserve::decoder::kernels, "the int8 kernels this machine can run");
  m.def("use_kernel", &seqserve::decoder::use_kernel, py::arg("name"),
        "run the named int8 kernel ('auto': the fastest); False if this machine cannot");
}
