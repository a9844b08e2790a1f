"""Run minidl's CuPy ``ElementwiseKernel`` sources on the CPU, to test them without a GPU.

``EmulatedElementwiseKernel(in_params, out_params, operation, name)`` has the constructor
and the call of ``cupy.ElementwiseKernel`` for the subset ``minidl/kernels/cuda_kernels.py``
uses: every array argument 1-D and C-contiguous, every non-raw array the size of the
outputs, outputs passed explicitly. On the first call with a given set of dtypes it writes
the kernel as a C++ function,

    for (long long i = 0; i < size; ++i) { T& out = out_ptr[i]; <operation> }

(raw arrays become pointers indexed as the kernel indexes them; non-raw inputs the value
at ``i``; scalars plain parameters), compiles it with the system's C++ compiler into a
shared library and calls it through ctypes on NumPy arrays. The operation's text is the
very string CuPy compiles with NVRTC on a GPU, so its index arithmetic, bounds and
accumulation order are what these tests check; CUDA-only features (shared memory,
``__syncthreads``, atomics) are not emulated and the kernels do not use them.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")

_C_TYPES = {
    "float32": ("float", ctypes.c_float), "float64": ("double", ctypes.c_double),
    "int8": ("signed char", ctypes.c_int8), "uint8": ("unsigned char", ctypes.c_uint8),
    "int16": ("short", ctypes.c_int16), "uint16": ("unsigned short", ctypes.c_uint16),
    "int32": ("int", ctypes.c_int32), "uint32": ("unsigned int", ctypes.c_uint32),
    "int64": ("long long", ctypes.c_int64), "uint64": ("unsigned long long", ctypes.c_uint64),
    "bool": ("bool", ctypes.c_bool),
}

_PREAMBLE = """
#include <cmath>
#include <cstddef>
#include <algorithm>
// CUDA's device math is overloaded on float and double, and max/min are global there.
using std::exp; using std::log; using std::tanh; using std::isnan; using std::sqrt;
using std::max; using std::min; using std::fabs;
"""

_build_dir = None
_libraries = {}


class Param:
    def __init__(self, text):
        words = text.split()
        self.raw = words[0] == "raw"
        if self.raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError(f"emulator: cannot parse the parameter {text!r}")
        self.type, self.name = words
        self.placeholder = self.type not in _C_TYPES


def _params(spec):
    return [Param(p) for p in spec.split(",") if p.strip()]


class EmulatedElementwiseKernel:
    """``cupy.ElementwiseKernel`` for the subset described in the module docstring."""

    def __init__(self, in_params, out_params, operation, name="kernel"):
        if CXX is None:
            raise RuntimeError("the CUDA-kernel emulator needs a C++ compiler (g++)")
        self.inputs = _params(in_params)
        self.outputs = _params(out_params)
        self.operation = operation
        self.name = re.sub(r"\W", "_", name)

    def _bind_types(self, args):
        """Placeholder name -> NumPy dtype name, from the arrays passed for it."""
        bound = {}
        for p, a in zip(self.inputs + self.outputs, args):
            if p.placeholder:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: {p.name} ({p.type}) must be an array here")
                name = a.dtype.name
                if bound.setdefault(p.type, name) != name:
                    raise TypeError(f"{self.name}: type {p.type} bound to {bound[p.type]} and {name}")
        return bound

    def _source(self, bound):
        ctype = {**{k: v[0] for k, v in _C_TYPES.items()},
                 **{ph: _C_TYPES[dt][0] for ph, dt in bound.items()}}
        typedefs = "".join(f"typedef {_C_TYPES[dt][0]} {ph};\n" for ph, dt in bound.items())
        sig, body = ["long long size_"], []
        for p in self.inputs:
            t = ctype[p.type]
            if p.raw:
                sig.append(f"const {t}* {p.name}")
            elif p.placeholder or p.type in _C_TYPES:
                # a scalar for a concrete type, unless an array is passed (decided per call)
                sig.append(f"const {t}* {p.name}_ptr_")
                body.append(f"const {t} {p.name} = {p.name}_ptr_[i];")
        for p in self.outputs:
            t = ctype[p.type]
            sig.append(f"{t}* {p.name}_ptr_")
            body.append(f"{t}& {p.name} = {p.name}_ptr_[i];")
        return (_PREAMBLE + typedefs + f'extern "C" void {self.name}({", ".join(sig)}) {{\n'
                + "  for (long long i = 0; i < size_; ++i) {\n    " + "\n    ".join(body)
                + "\n" + self.operation + "\n  }\n}\n")

    def __call__(self, *args):
        n_in, n_out = len(self.inputs), len(self.outputs)
        if len(args) != n_in + n_out:
            raise TypeError(f"{self.name}: expected {n_in} inputs and {n_out} outputs "
                            f"(outputs must be passed), got {len(args)} arguments")
        # A non-raw input of concrete type may be a scalar (CuPy broadcasts it); the
        # emulator passes scalars of concrete types as plain values instead.
        scalars = [not p.raw and not p.placeholder and not isinstance(a, np.ndarray)
                   for p, a in zip(self.inputs, args)]
        bound = self._bind_types(args)
        source = self._source_with_scalars(bound, scalars)
        fn = _compile(source, self.name)
        size = args[n_in].size
        c_args = [ctypes.c_longlong(size)]
        for k, (p, a) in enumerate(zip(self.inputs + self.outputs, args)):
            if k < n_in and scalars[k]:
                c_args.append(_C_TYPES[p.type][1](a))
                continue
            if not (isinstance(a, np.ndarray) and a.ndim == 1 and a.flags.c_contiguous):
                raise TypeError(f"{self.name}: {p.name} must be a 1-D C-contiguous array")
            if not p.raw and a.size != size:
                raise ValueError(f"{self.name}: {p.name} has {a.size} elements, outputs {size}")
            if not p.placeholder and a.dtype.name != p.type:
                raise TypeError(f"{self.name}: {p.name} must be {p.type}, got {a.dtype}")
            c_args.append(ctypes.c_void_p(a.ctypes.data))
        fn(*c_args)
        return args[n_in:] if n_out > 1 else args[n_in]

    def _source_with_scalars(self, bound, scalars):
        source = self._source(bound)
        for p, is_scalar in zip(self.inputs, scalars):
            if is_scalar:
                t = _C_TYPES[p.type][0]
                source = source.replace(f"const {t}* {p.name}_ptr_", f"{t} {p.name}", 1)
                source = source.replace(f"const {t} {p.name} = {p.name}_ptr_[i];", "", 1)
        return source


def _compile(source, name):
    """The C function ``name`` from ``source``, compiled once per source text."""
    global _build_dir
    key = hashlib.sha1(source.encode()).hexdigest()[:16]
    fn = _libraries.get(key)
    if fn is None:
        if _build_dir is None:
            _build_dir = tempfile.mkdtemp(prefix="minidl_cuda_emulator_")
        src = os.path.join(_build_dir, f"{name}_{key}.cpp")
        lib = os.path.join(_build_dir, f"{name}_{key}.so")
        with open(src, "w") as f:
            f.write(source)
        result = subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-Wall", "-Werror=return-type",
                                 "-o", lib, src], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{name}: the kernel does not compile as C++:\n{result.stderr}"
                               f"\n--- source ---\n{source}")
        fn = getattr(ctypes.CDLL(lib), name)
        fn.restype = None
        _libraries[key] = fn
    return fn
