// A NumPy (or any buffer-protocol) array seen from C++: shared by the module's host helpers (pack.cc) and the
// kernel's host entry point (newton.cc). Plain CPython, no NumPy C API.
#pragma once

#include <Python.h>

#include <cstring>

namespace lljax_py {

// A C-contiguous buffer of one of the expected element formats, released on scope exit.
struct View {
  Py_buffer buffer{};
  bool held = false;
  ~View() {
    if (held) PyBuffer_Release(&buffer);
  }
  // Format code ('q' int64, 'i' int32, 'd' float64, 'f' float32) or 0 with a Python error set.
  char get(PyObject* obj, const char* name, const char* allowed, bool writable) {
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &buffer, flags) != 0) return 0;
    held = true;
    const char* f = buffer.format ? buffer.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    char code = *f;
    if (code == 'l' && buffer.itemsize == 8) code = 'q';  // int64 on LP64
    if (code == 'l' && buffer.itemsize == 4) code = 'i';
    if (f[0] == 0 || f[1] != 0 || std::strchr(allowed, code) == nullptr) {
      PyErr_Format(PyExc_TypeError, "lljax.solve.kernels: %s has element format '%s', expected one of '%s'", name,
                   buffer.format ? buffer.format : "B", allowed);
      return 0;
    }
    return code;
  }
  Py_ssize_t size() const { return buffer.len / buffer.itemsize; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(buffer.buf);
  }
};

}  // namespace lljax_py
