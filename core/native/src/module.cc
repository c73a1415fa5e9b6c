// The Python module `core.native._decoder`: the native encoder and decoder step, the int8
// product on its own (tests), and the choice of int8 kernel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "encoder.h"
#include "gemm.h"
#include "search.h"
#include "simd.h"
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
           py::arg("cross_v"), py::arg("past_rows") = py::none(),
           py::arg("past_slots") = py::none(), py::arg("cross_rows") = py::none(),
           py::arg("cross_slots") = py::none());
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
  m.def(
      "best_candidates",
      [](const Floats& log_probs, const py::array_t<double, py::array::c_style | py::array::forcecast>& cum,
         const seqserve::decoder::Longs& first, int n) {
        if (log_probs.ndim() != 2 || cum.ndim() != 2 || first.ndim() != 1 ||
            first.shape(0) != cum.shape(0))
          throw std::invalid_argument("log_probs [R, V], cum [N, k], first [N] expected");
        const int vocab = static_cast<int>(log_probs.shape(1));
        const int requests = static_cast<int>(cum.shape(0)), k = static_cast<int>(cum.shape(1));
        if (n < 1 || n > static_cast<py::ssize_t>(k) * vocab)
          throw std::invalid_argument("n must be in 1..k V");
        const std::int64_t* f = first.data();
        for (int i = 0; i < requests; ++i)
          if (f[i] < 0 || f[i] + k > log_probs.shape(0))
            throw std::invalid_argument("first: rows " + std::to_string(f[i]) + ".. are not in log_probs");
        py::array_t<std::int64_t> index({requests, n});
        py::array_t<double> score({requests, n});
        {
          py::gil_scoped_release release;
          seqserve::decoder::best_candidates(log_probs.data(), vocab, cum.data(), f, requests, k,
                                             n, index.mutable_data(), score.mutable_data());
        }
        return py::make_tuple(std::move(index), std::move(score));
      },
      py::arg("log_probs"), py::arg("cum"), py::arg("first"), py::arg("n"),
      "each request's n best candidates, as core.translation.search.best_candidates ranks them");
  m.def("kernel", &seqserve::decoder::kernel_name, "the int8 kernel in use");
  m.def("kernels", &seqserve::decoder::kernels, "the int8 kernels this machine can run");
  m.def("use_kernel", &seqserve::decoder::use_kernel, py::arg("name"),
        "run the named int8 kernel ('auto': the fastest); False if this machine cannot");
  m.def("isa", &seqserve::decoder::isa_name,
        "the vector instruction set in use: 'avx512', 'avx2_vnni', 'avx2' or 'baseline'");
  m.def("isas", &seqserve::decoder::isas, "the vector instruction sets this CPU runs, best first");
  m.attr("ISA_NAMES") = std::vector<std::string>(std::begin(seqserve::decoder::kIsaNames),
                                                 std::end(seqserve::decoder::kIsaNames));
  m.def("use_isa", &seqserve::decoder::use_isa, py::arg("name"),
        "run at most the named instruction set ('auto': the best, capped by "
        "SEQSERVE_NATIVE_ISA); the int8 kernels above it are not run. False if the CPU cannot");
}
