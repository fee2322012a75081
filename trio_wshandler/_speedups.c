/* The compiled unmask of trio_wshandler (see _unmask.py, which falls back to pure Python
 * when this module was not built).
 *
 * A client masks every byte of its frames' payload with a 4-byte key (RFC 6455 section 5.3).
 * Undoing it is a byte-wise XOR: in pure Python about 1 GB/s at best, here 8 bytes at a time.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* XOR len bytes of src with the mask (starting at mask[phase]) into dst. */
static void
xor_mask(char *dst, const char *src, Py_ssize_t len, const unsigned char *mask, int phase)
{
    unsigned char m[8];
    for (int i = 0; i < 8; i++) {
        m[i] = mask[(phase + i) & 3];
    }
    Py_ssize_t i = 0;
    if (len >= 8) {
        uint64_t m64;
        memcpy(&m64, m, 8);
        for (; i + 8 <= len; i += 8) {
            uint64_t x;
            memcpy(&x, src + i, 8);
            x ^= m64;
            memcpy(dst + i, &x, 8);
        }
    }
    for (; i < len; i++) {
        dst[i] = (char)(src[i] ^ m[i & 7]);
    }
}

/* Check the mask and phase, and that start..end lies in data. */
static int
check(Py_buffer *data, Py_ssize_t start, Py_ssize_t end, Py_buffer *mask, int phase)
{
    if (start < 0 || end < start || end > data->len) {
        PyErr_SetString(PyExc_ValueError, "start and end are not within the data");
        return -1;
    }
    if (mask->len != 4) {
        PyErr_SetString(PyExc_ValueError, "the mask is 4 bytes");
        return -1;
    }
    if (phase < 0 || phase > 3) {
        PyErr_SetString(PyExc_ValueError, "the phase is 0 to 3");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(unmask_doc,
"unmask(data, start, end, mask, phase) -> bytes\n\n"
"``data[start:end]`` XORed with the 4-byte ``mask``, starting at ``mask[phase]``.");

static PyObject *
unmask(PyObject *self, PyObject *args)
{
    Py_buffer data, mask;
    Py_ssize_t start, end;
    int phase;
    if (!PyArg_ParseTuple(args, "y*nny*i:unmask", &data, &start, &end, &mask, &phase)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (check(&data, start, end, &mask, phase) == 0) {
        result = PyBytes_FromStringAndSize(NULL, end - start);
        if (result != NULL) {
            xor_mask(PyBytes_AS_STRING(result), (char *)data.buf + start, end - start, mask.buf,
                     phase);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    return result;
}

static PyMethodDef methods[] = {
    {"unmask", unmask, METH_VARARGS, unmask_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "trio_wshandler._speedups",
    "The compiled unmask of trio_wshandler.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
