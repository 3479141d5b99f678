// The Python module cure_ext._C: importing it loads this library, whose static initialisers register
// the op (ops.cpp) and its kernels. It defines no Python functions of its own.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
