// A Python list of token ids made from C's int32 ids without an int object made for each: the items are taken from a
// list of the vocabulary's ids as int objects (made once, tokenizer/cencode.py), each one reference more. array.tolist
// made a new int per id (~45 ns, more than the whole C encode of a warm text); this is ~15 ns, mostly the reference
// count's cache line. Python's C API: loaded with ctypes.PyDLL (the GIL held), built against this interpreter's
// headers (cbuild.PYTHON_API).

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

// ids[0..n) as a new list of ints[ids[i]] (`ints` a list); NULL with IndexError for an id outside it.
PyObject *ids_to_list(PyObject *ints, const int32_t *ids, Py_ssize_t n) {
    if (!PyList_Check(ints)) {
        PyErr_SetString(PyExc_TypeError, "ids_to_list needs a list of ints");
        return NULL;
    }
    Py_ssize_t size = PyList_GET_SIZE(ints);
    for (Py_ssize_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= size) {
            PyErr_Format(PyExc_IndexError, "token id %d is outside the table of %zd ids", (int)ids[i], size);
            return NULL;
        }
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(ints, ids[i]);
        Py_INCREF(o);
        PyList_SET_ITEM(out, i, o);
    }
    return out;
}
