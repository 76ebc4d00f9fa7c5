/*
 * marginflow.core._ccore -- the margin core in C (CPython + NumPy C API, pthreads).
 *
 * Twin of marginflow/core/reference.py: same functions, signatures, semantics and error
 * messages (the formulas live in the reference's docstrings and in README.md). Conventions:
 *   - inputs are never written; every array is checked for type (TypeError), ndim/shape and
 *     values (ValueError); any memory layout is accepted (non C-contiguous input is copied);
 *   - the GIL is released only around the loops; an error met there is recorded in a
 *     per-thread slot and raised once the GIL is back (numexpr style);
 *   - module state lives in a struct reached from the module (msgspec style), no globals
 *     besides constant tables.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_23_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MF_X86 1
#else
#define MF_X86 0
#endif

#define KIND_PERP 0
#define KIND_FUTURE 1
#define KIND_CALL 2
#define KIND_PUT 3

#define CW 32          /* historical scenarios per register block (8 x 4 doubles) */
#define MAX_THREADS 64
#define MAXD(a, b) ((a) > (b) ? (a) : (b))
#define MIND(a, b) ((a) < (b) ? (a) : (b))
#define RANK_MAX 64    /* ES/VaR candidates ranked branch-free up to this many, else a heap */

typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4i __attribute__((vector_size(32)));

/* ------------------------------------------------------------------ module state */

typedef struct {
    PyTypeObject *MarginModelType;
} ModState;

/* ------------------------------------------------------------------ small helpers */

static Py_ssize_t round_up(Py_ssize_t n, Py_ssize_t to) { return (n + to - 1) / to * to; }

/* c ? a : b without a branch (the compilers turn a ternary on doubles into a jump) */
static inline double pick_d(int c, double a, double b)
{
    uint64_t ua, ub, mk = -(uint64_t)(c != 0);
    memcpy(&ua, &a, 8);
    memcpy(&ub, &b, 8);
    ua = (ua & mk) | (ub & ~mk);
    memcpy(&a, &ua, 8);
    return a;
}

static void *aligned_zalloc(size_t bytes)
{
    size_t sz = (size_t)round_up((Py_ssize_t)(bytes ? bytes : 64), 64);
    void *p = aligned_alloc(64, sz);
    if (p) memset(p, 0, sz);
    return p;
}

static void shape_str(char *buf, size_t n, int nd, const npy_intp *d)
{
    if (nd == 1) snprintf(buf, n, "(%zd,)", (Py_ssize_t)d[0]);
    else if (nd == 2) snprintf(buf, n, "(%zd, %zd)", (Py_ssize_t)d[0], (Py_ssize_t)d[1]);
    else snprintf(buf, n, "(...)");
}

static const char *type_name_of(int typenum)
{
    switch (typenum) {
    case NPY_INT8: return "int8";
    case NPY_UINT8: return "uint8";
    case NPY_INT32: return "int32";
    case NPY_INT64: return "int64";
    case NPY_FLOAT64: return "float64";
    default: return "?";
    }
}

static int wrong_type(PyObject *obj, const char *name)
{
    PyObject *tn = PyType_GetName(Py_TYPE(obj));
    if (tn) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %U", name, tn);
        Py_DECREF(tn);
    }
    return -1;
}

/* Check an ndarray argument; return a new reference to a C-contiguous aligned array with
 * the same data (the same object when it already is), or NULL with an exception set. */
static PyArrayObject *get_array(PyObject *obj, const char *name, int typenum, int ndim)
{
    if (!PyArray_Check(obj)) {
        wrong_type(obj, name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s, got %S", name, type_name_of(typenum),
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-D, got %d-D", name, ndim, PyArray_NDIM(a));
        return NULL;
    }
    return (PyArrayObject *)PyArray_FromArray(a, NULL, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
}

/* uint8 or bool flags, returned as a contiguous array whose bytes are read as 0 / nonzero. */
static PyArrayObject *get_flags(PyObject *obj, const char *name)
{
    if (!PyArray_Check(obj)) {
        wrong_type(obj, name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_UINT8 && PyArray_TYPE(a) != NPY_BOOL) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype uint8 or bool, got %S", name,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (PyArray_NDIM(a) != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be 1-D, got %d-D", name, PyArray_NDIM(a));
        return NULL;
    }
    return (PyArrayObject *)PyArray_FromArray(a, NULL, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
}

static int check_shape(PyArrayObject *a, const char *name, int nd, const npy_intp *want)
{
    int ok = PyArray_NDIM(a) == nd;
    for (int i = 0; ok && i < nd; i++) ok = PyArray_DIM(a, i) == want[i];
    if (ok) return 0;
    char w[64], g[64];
    shape_str(w, sizeof w, nd, want);
    shape_str(g, sizeof g, PyArray_NDIM(a), PyArray_DIMS(a));
    PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %s", name, w, g);
    return -1;
}

static int check_len(PyArrayObject *a, const char *name, npy_intp n) { return check_shape(a, name, 1, &n); }

static int get_real(PyObject *obj, const char *name, double *out)
{
    if (!PyFloat_Check(obj) && !PyLong_Check(obj) &&
        !(Py_TYPE(obj)->tp_as_number && Py_TYPE(obj)->tp_as_number->nb_float)) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number", name);
        return -1;
    }
    *out = PyFloat_AsDouble(obj);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int get_int(PyObject *obj, const char *name, Py_ssize_t *out)
{
    PyObject *i = PyNumber_Index(obj);
    if (!i) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be an integer", name);
        }
        return -1;
    }
    *out = PyLong_AsSsize_t(i);
    Py_DECREF(i);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int get_threads(PyObject *obj, int *out)
{
    Py_ssize_t n = 2;
    if (obj && get_int(obj, "n_threads", &n) < 0) return -1;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n_threads must be >= 1");
        return -1;
    }
    *out = (int)(n > MAX_THREADS ? MAX_THREADS : n);
    return 0;
}

/* "name[i] must be what" / "name[i, j] must be what" for the first bad element. */
static int bad_value_1d(const char *name, Py_ssize_t i, const char *what)
{
    PyErr_Format(PyExc_ValueError, "%s[%zd] must be %s", name, i, what);
    return -1;
}

static int bad_value_2d(const char *name, Py_ssize_t i, Py_ssize_t j, const char *what)
{
    PyErr_Format(PyExc_ValueError, "%s[%zd, %zd] must be %s", name, i, j, what);
    return -1;
}

static int check_range_i32(const int32_t *v, Py_ssize_t n, Py_ssize_t hi, const char *name)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (v[i] < 0 || v[i] >= hi) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] = %d is out of range [0, %zd)", name, i, (int)v[i], hi);
            return -1;
        }
    return 0;
}

/* kinds of per-element checks shared by the validators */
enum { CHK_FINITE, CHK_POS, CHK_NONNEG };

static int check_values(const double *v, Py_ssize_t n, int how, const char *name)
{
    static const char *what[] = {"finite", "finite and > 0", "finite and >= 0"};
    for (Py_ssize_t i = 0; i < n; i++) {
        double x = v[i];
        int ok = isfinite(x) && (how == CHK_FINITE || (how == CHK_POS ? x > 0 : x >= 0));
        if (!ok) return bad_value_1d(name, i, what[how]);
    }
    return 0;
}

/* ------------------------------------------------------------------ threads */

typedef void (*work_fn)(void *ctx, int tid, int nthreads);

typedef struct {
    work_fn fn;
    void *ctx;
    int tid, n;
} ThreadArg;

static void *thread_main(void *p)
{
    ThreadArg *a = (ThreadArg *)p;
    a->fn(a->ctx, a->tid, a->n);
    return NULL;
}

/* Run fn(ctx, t, n) for t in [0, n): t = 0 on the calling thread. Call without the GIL.
 * A thread that cannot be started runs inline, so the work is always done. */
static void run_parallel(work_fn fn, void *ctx, int n)
{
    pthread_t th[MAX_THREADS];
    ThreadArg args[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < n; t++) {
        args[t] = (ThreadArg){fn, ctx, t, n};
        started[t] = pthread_create(&th[t], NULL, thread_main, &args[t]) == 0;
    }
    fn(ctx, 0, n);
    for (int t = 1; t < n; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else fn(ctx, t, n);
    }
}

/* ------------------------------------------------------------------ Black-76 */

static inline double ncdf(double x) { return 0.5 * erfc(-x * M_SQRT1_2); }

static double black76(int is_call, double f, double k, double t, double vol)
{
    double sd = vol * sqrt(t);
    if (!(sd > 0.0)) return is_call ? MAXD(f - k, 0.0) : MAXD(k - f, 0.0);
    double d1 = (log(f / k) + 0.5 * sd * sd) / sd;
    double d2 = d1 - sd;
    return is_call ? f * ncdf(d1) - k * ncdf(d2) : k * ncdf(-d2) - f * ncdf(-d1);
}

typedef struct {
    PyArrayObject *kind, *forward, *strike, *expiry, *vol;
} InstArrays;

static void inst_release(InstArrays *a)
{
    Py_XDECREF(a->kind);
    Py_XDECREF(a->forward);
    Py_XDECREF(a->strike);
    Py_XDECREF(a->expiry);
    Py_XDECREF(a->vol);
}

static int inst_arrays(InstArrays *a, PyObject *kind, PyObject *forward, PyObject *strike, PyObject *expiry,
                       PyObject *vol)
{
    memset(a, 0, sizeof *a);
    if (!(a->kind = get_array(kind, "kind", NPY_INT8, 1))) return -1;
    npy_intp n = PyArray_DIM(a->kind, 0);
    PyObject *objs[4] = {forward, strike, expiry, vol};
    const char *names[4] = {"forward", "strike", "expiry_years", "implied_vol"};
    PyArrayObject **dst[4] = {&a->forward, &a->strike, &a->expiry, &a->vol};
    for (int i = 0; i < 4; i++) {
        if (!(*dst[i] = get_array(objs[i], names[i], NPY_FLOAT64, 1))) return -1;
        if (check_len(*dst[i], names[i], n) < 0) return -1;
    }
    const int8_t *kd = (const int8_t *)PyArray_DATA(a->kind);
    for (npy_intp i = 0; i < n; i++)
        if (kd[i] < 0 || kd[i] > 3) {
            PyErr_Format(PyExc_ValueError, "kind[%zd] = %d is not 0 (perp), 1 (future), 2 (call) or 3 (put)",
                         (Py_ssize_t)i, (int)kd[i]);
            return -1;
        }
    const double *f = PyArray_DATA(a->forward), *k = PyArray_DATA(a->strike);
    if (check_values(f, n, CHK_POS, "forward") < 0) return -1;
    for (npy_intp i = 0; i < n; i++)
        if (!(isfinite(k[i]) && (k[i] > 0 || kd[i] < KIND_CALL)))
            return bad_value_1d("strike", i, "finite (and > 0 for an option)");
    if (check_values(PyArray_DATA(a->expiry), n, CHK_NONNEG, "expiry_years") < 0) return -1;
    if (check_values(PyArray_DATA(a->vol), n, CHK_NONNEG, "implied_vol") < 0) return -1;
    return 0;
}

static PyObject *py_black76_price(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"kind", "forward", "strike", "expiry_years", "implied_vol", NULL};
    PyObject *o[5];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO:black76_price", kwlist, &o[0], &o[1], &o[2], &o[3], &o[4]))
        return NULL;
    InstArrays a;
    PyArrayObject *out = NULL;
    if (inst_arrays(&a, o[0], o[1], o[2], o[3], o[4]) < 0) goto done;
    npy_intp n = PyArray_DIM(a.kind, 0);
    if (!(out = (PyArrayObject *)PyArray_EMPTY(1, &n, NPY_FLOAT64, 0))) goto done;
    const int8_t *kd = PyArray_DATA(a.kind);
    const double *f = PyArray_DATA(a.forward), *k = PyArray_DATA(a.strike), *t = PyArray_DATA(a.expiry),
                 *v = PyArray_DATA(a.vol);
    double *r = PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp i = 0; i < n; i++)
        r[i] = kd[i] >= KIND_CALL ? black76(kd[i] == KIND_CALL, f[i], k[i], t[i], v[i]) : f[i];
    Py_END_ALLOW_THREADS
done:
    inst_release(&a);
    return (PyObject *)out;
}

/* ------------------------------------------------------------------ depth curve distance */

/* Distance (bps) at which a position's size is covered by its side of the book's depth curve, per
 * position, as the reference's depth_distance: row r = 2k + (q < 0) of the tables holds W points
 * (W a power of two) of sizes normalised by the last one (share, non-decreasing in [0, 1]) and their
 * distances; s = |q| / last[r] (inf for an empty side); the segment j with share[j−1] < min(s, 1) <=
 * share[j] by a branchless binary search, D linear in it; beyond the curve (s > 1)
 * D = last_bps[r] (1 + penalty (1 − 1/s)); the result max(floor[k], D). */
static PyObject *py_depth_distance(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"instrument", "size", "points_share", "points_bps", "last_contracts", "last_bps",
                             "floor_bps", "uncovered_penalty", NULL};
    PyObject *o[8];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOO:depth_distance", kwlist, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &o[5], &o[6], &o[7]))
        return NULL;
    static const char *names[7] = {"instrument", "size", "points_share", "points_bps", "last_contracts",
                                   "last_bps", "floor_bps"};
    static const int types[7] = {NPY_INT32, NPY_FLOAT64, NPY_FLOAT64, NPY_FLOAT64, NPY_FLOAT64, NPY_FLOAT64,
                                 NPY_FLOAT64};
    static const int dims[7] = {1, 1, 2, 2, 1, 1, 1};
    PyArrayObject *a[7] = {NULL};
    PyArrayObject *out = NULL;
    double pen;
    for (int i = 0; i < 7; i++)
        if (!(a[i] = get_array(o[i], names[i], types[i], dims[i]))) goto fail;
    if (get_real(o[7], "uncovered_penalty", &pen) < 0) goto fail;
    npy_intp n = PyArray_DIM(a[0], 0), K = PyArray_DIM(a[6], 0), W = PyArray_DIM(a[2], 1);
    npy_intp tbl[2] = {2 * K, W};
    if (check_len(a[1], "size", n) < 0 || check_shape(a[2], "points_share", 2, tbl) < 0 ||
        check_shape(a[3], "points_bps", 2, tbl) < 0 || check_len(a[4], "last_contracts", 2 * K) < 0 ||
        check_len(a[5], "last_bps", 2 * K) < 0)
        goto fail;
    if (W < 2 || (W & (W - 1)) != 0) {
        PyErr_Format(PyExc_ValueError, "points_share must have a power of two >= 2 of columns, got %zd", (Py_ssize_t)W);
        goto fail;
    }
    if (!(isfinite(pen) && pen >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "uncovered_penalty must be finite and >= 0");
        goto fail;
    }
    if (check_values(PyArray_DATA(a[6]), K, CHK_NONNEG, "floor_bps") < 0 ||
        check_values(PyArray_DATA(a[4]), 2 * K, CHK_NONNEG, "last_contracts") < 0 ||
        check_values(PyArray_DATA(a[5]), 2 * K, CHK_NONNEG, "last_bps") < 0)
        goto fail;
    {
        const double *v[2] = {PyArray_DATA(a[2]), PyArray_DATA(a[3])};
        for (int t = 0; t < 2; t++)
            for (npy_intp i = 0; i < 2 * K * W; i++)
                if (!(isfinite(v[t][i]) && v[t][i] >= 0.0)) {
                    bad_value_2d(names[2 + t], i / W, i % W, "finite and >= 0");
                    goto fail;
                }
    }
    if (check_range_i32(PyArray_DATA(a[0]), n, K, "instrument") < 0 ||
        check_values(PyArray_DATA(a[1]), n, CHK_FINITE, "size") < 0)
        goto fail;
    if (!(out = (PyArrayObject *)PyArray_EMPTY(1, &n, NPY_FLOAT64, 0))) goto fail;
    {
        const int32_t *kk = PyArray_DATA(a[0]);
        const double *q = PyArray_DATA(a[1]), *px = PyArray_DATA(a[2]), *pd = PyArray_DATA(a[3]),
                     *lastc = PyArray_DATA(a[4]), *lastb = PyArray_DATA(a[5]), *floor_ = PyArray_DATA(a[6]);
        double *r = PyArray_DATA(out);
        Py_BEGIN_ALLOW_THREADS
        for (npy_intp i = 0; i < n; i++) {
            npy_intp k = kk[i], row = 2 * k + (q[i] < 0.0);
            double size = fabs(q[i]), last = lastc[row];
            double share = last > 0.0 ? size / last : INFINITY;
            double u = share < 1.0 ? share : 1.0;
            const double *x = px + row * W, *d = pd + row * W;
            npy_intp j = 0;
            for (npy_intp step = W / 2; step; step >>= 1) j += step * (x[j + step - 1] < u);
            j = j < 1 ? 1 : (j > W - 1 ? W - 1 : j);
            double xl = x[j - 1], span = x[j] - xl;
            double w = span > 0.0 ? (u - xl) / span : 1.0;
            double dist = (d[j] - d[j - 1]) * w + d[j - 1];
            if (share > 1.0) dist = lastb[row] * (1.0 + pen * (1.0 - 1.0 / share));
            r[i] = MAXD(dist, floor_[k]);
        }
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < 7; i++) Py_XDECREF(a[i]);
    return (PyObject *)out;
fail:
    for (int i = 0; i < 7; i++) Py_XDECREF(a[i]);
    return NULL;
}

/* ------------------------------------------------------------------ risk arrays */

typedef struct {
    Py_ssize_t K, S, U;
    const int8_t *kind;
    const int32_t *und;
    const double *f, *k, *t, *vol, *mult, *ps, *vs;
    double horizon;
    int relative;
    double *out;
} RiskCtx;

static void risk_work(void *p, int tid, int n)
{
    RiskCtx *c = (RiskCtx *)p;
    Py_ssize_t k0 = c->K * tid / n, k1 = c->K * (tid + 1) / n;
    for (Py_ssize_t i = k0; i < k1; i++) {
        double *row = c->out + i * c->S;
        Py_ssize_t u = c->und[i];
        double f = c->f[i], m = c->mult[i];
        if (c->kind[i] < KIND_CALL) {
            double mf = m * f;
            for (Py_ssize_t s = 0; s < c->S; s++) row[s] = mf * c->ps[s * c->U + u];
            continue;
        }
        int call = c->kind[i] == KIND_CALL;
        double sig = c->vol[i], t1 = MAXD(c->t[i] - c->horizon, 0.0);
        double v0 = black76(call, f, c->k[i], c->t[i], sig);
        for (Py_ssize_t s = 0; s < c->S; s++) {
            double dv = c->vs[s * c->U + u];
            double sg = c->relative ? sig * (1.0 + dv) : sig + dv;
            sg = MAXD(sg, 0.0);
            row[s] = m * (black76(call, f * (1.0 + c->ps[s * c->U + u]), c->k[i], t1, sg) - v0);
        }
    }
}

static PyObject *py_risk_arrays(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"kind", "underlying", "forward", "strike", "expiry_years", "implied_vol",
                             "multiplier", "price_shock", "vol_shock", "horizon_years",
                             "vol_shock_relative", "n_threads", NULL};
    PyObject *okind, *ound, *of, *ok, *ot, *ov, *om, *ops, *ovs, *oh = NULL, *orel = NULL, *onth = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOO|$OOO:risk_arrays", kwlist, &okind, &ound, &of, &ok,
                                     &ot, &ov, &om, &ops, &ovs, &oh, &orel, &onth))
        return NULL;
    InstArrays a;
    PyArrayObject *und = NULL, *mult = NULL, *ps = NULL, *vs = NULL, *out = NULL;
    PyObject *ret = NULL;
    double horizon = 0.0;
    int relative = 0, nth;
    if (inst_arrays(&a, okind, of, ok, ot, ov) < 0) goto done;
    npy_intp K = PyArray_DIM(a.kind, 0);
    if (!(und = get_array(ound, "underlying", NPY_INT32, 1)) || check_len(und, "underlying", K) < 0) goto done;
    if (!(mult = get_array(om, "multiplier", NPY_FLOAT64, 1)) || check_len(mult, "multiplier", K) < 0) goto done;
    if (!(ps = get_array(ops, "price_shock", NPY_FLOAT64, 2))) goto done;
    if (!(vs = get_array(ovs, "vol_shock", NPY_FLOAT64, 2)) ||
        check_shape(vs, "vol_shock", 2, PyArray_DIMS(ps)) < 0)
        goto done;
    if (oh && get_real(oh, "horizon_years", &horizon) < 0) goto done;
    if (orel && (relative = PyObject_IsTrue(orel)) < 0) goto done;
    if (get_threads(onth, &nth) < 0) goto done;
    npy_intp S = PyArray_DIM(ps, 0), U = PyArray_DIM(ps, 1);
    if (check_range_i32(PyArray_DATA(und), K, U, "underlying") < 0) goto done;
    if (check_values(PyArray_DATA(mult), K, CHK_POS, "multiplier") < 0) goto done;
    const double *psd = PyArray_DATA(ps), *vsd = PyArray_DATA(vs);
    for (npy_intp i = 0; i < S * U; i++)
        if (!(isfinite(psd[i]) && psd[i] > -1.0)) {
            bad_value_2d("price_shock", i / U, i % U, "finite and > -1");
            goto done;
        }
    for (npy_intp i = 0; i < S * U; i++)
        if (!isfinite(vsd[i])) {
            bad_value_2d("vol_shock", i / U, i % U, "finite");
            goto done;
        }
    if (!(isfinite(horizon) && horizon >= 0)) {
        PyErr_SetString(PyExc_ValueError, "horizon_years must be finite and >= 0");
        goto done;
    }
    npy_intp dims[2] = {K, S};
    if (!(out = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_FLOAT64, 0))) goto done;
    RiskCtx c = {K, S, U, PyArray_DATA(a.kind), PyArray_DATA(und), PyArray_DATA(a.forward),
                 PyArray_DATA(a.strike), PyArray_DATA(a.expiry), PyArray_DATA(a.vol), PyArray_DATA(mult),
                 psd, vsd, horizon, relative, PyArray_DATA(out)};
    if (nth > K) nth = K > 0 ? (int)K : 1;
    Py_BEGIN_ALLOW_THREADS
    run_parallel(risk_work, &c, nth);
    Py_END_ALLOW_THREADS
    ret = (PyObject *)out;
    out = NULL;
done:
    inst_release(&a);
    Py_XDECREF(und);
    Py_XDECREF(mult);
    Py_XDECREF(ps);
    Py_XDECREF(vs);
    Py_XDECREF(out);
    return ret;
}

/* ------------------------------------------------------------------ selection helpers */

/* min-heap of doubles */
static inline void heap_sift(double *h, Py_ssize_t n, Py_ssize_t i)
{
    double x = h[i];
    for (;;) {
        Py_ssize_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (!(h[c] < x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static inline void heap_make(double *h, Py_ssize_t n)
{
    for (Py_ssize_t i = n / 2 - 1; i >= 0; i--) heap_sift(h, n, i);
}

/* The m largest of x[0:n] (m <= n) into heap h; returns their sum, h[0] = the m-th largest. */
static double top_m(const double *x, Py_ssize_t n, Py_ssize_t m, double *h)
{
    memcpy(h, x, (size_t)m * sizeof(double));
    heap_make(h, m);
    for (Py_ssize_t i = m; i < n; i++)
        if (x[i] > h[0]) {
            h[0] = x[i];
            heap_sift(h, m, 0);
        }
    double s = 0.0;
    for (Py_ssize_t i = 0; i < m; i++) s += h[i];
    return s;
}

/* ------------------------------------------------------------------ the model */

struct IsaOps;

typedef struct {
    PyObject_HEAD
    const struct IsaOps *ops; /* hot loops for this CPU */
    Py_ssize_t K, S, G, T, H, U, B, GT, GTp, Hp, ld, m, nb; /* ld: row stride of rh */
    double es_level, mm;
    double *rg;        /* K x GTp, grid + tail rows, zero padded */
    double *rh;        /* K x Hp, historical rows, zero padded */
    double *w;         /* GTp: 1 for grid rows, tail weights, 0 padding */
    double *bound_g;   /* K: max |rg| (overflow screen) */
    double *bound_h;   /* K: max |rh| */
    int32_t *und;      /* K */
    double *notional, *liq_unit, *depth; /* K */
    double *floor_, *rate, *cum;         /* U x B */
    double *grid1, *es1;                 /* 2 x K: one contract long [0] / short [1] */
} Model;

/* per-thread (or per-call) scratch */
typedef struct {
    double *loss;      /* Hp */
    double *bmax;      /* nb = Hp / 8 block maxima */
    double *cand;      /* max(Hp, RANK_MAX) + 16 candidate values (ES/VaR) */
    double *heap;      /* m */
    double *gacc;      /* U x GTp */
    int32_t *touched;  /* U + 1 (grid_margin writes one slot past the distinct ones) */
    uint8_t *flag;     /* U */
    int32_t *ck;       /* cross positions: instrument */
    double *cq;        /* cross positions: -size */
    int32_t *cpos;     /* cross positions: index in the account */
    int32_t *sel;      /* nb selected blocks */
    void *block;
} Scratch;

static int scratch_init(Scratch *w, const Model *M, Py_ssize_t max_pos)
{
    if (max_pos < 1) max_pos = 1;
    size_t off[11], total = 0;
    size_t sizes[11] = {M->Hp * 8, M->nb * 8 + 64, (MAXD(M->Hp, RANK_MAX) + 16) * 8, M->m * 8, M->U * M->GTp * 8,
                        (M->U + 1) * 4, M->U, max_pos * 4, max_pos * 8, max_pos * 4, M->nb * 4 + 64};
    for (int i = 0; i < 11; i++) {
        off[i] = total;
        total += (size_t)round_up((Py_ssize_t)sizes[i], 64);
    }
    char *b = aligned_zalloc(total);
    if (!b) return -1;
    w->block = b;
    w->loss = (double *)(b + off[0]);
    w->bmax = (double *)(b + off[1]);
    w->cand = (double *)(b + off[2]);
    w->heap = (double *)(b + off[3]);
    w->gacc = (double *)(b + off[4]);
    w->touched = (int32_t *)(b + off[5]);
    w->flag = (uint8_t *)(b + off[6]);
    w->ck = (int32_t *)(b + off[7]);
    w->cq = (double *)(b + off[8]);
    w->cpos = (int32_t *)(b + off[9]);
    w->sel = (int32_t *)(b + off[10]);
    return 0;
}

static inline double pos_minimum(const Model *M, int32_t k, double a)
{
    const Py_ssize_t u = M->und[k], B = M->B;
    const double *fl = M->floor_ + u * B;
    double n = a * M->notional[k];
    Py_ssize_t b = 0;
    while (b + 1 < B && fl[b + 1] <= n) b++;
    return n * M->rate[u * B + b] - M->cum[u * B + b];
}

static inline double pos_liquidity(const Model *M, int32_t k, double a)
{
    double d = M->depth[k], e = MAXD(a - d, 0.0);
    return M->liq_unit[k] * (a + e * e / d);
}

/* sc: the position's scale of its scenario losses (liquidation horizon), 1 without one; the
 * minimum and the liquidity add-on stay on the true size. */
static inline double pos_isolated(const Model *M, int32_t k, double q, double sc)
{
    double a = fabs(q), as = a * sc;
    Py_ssize_t s = q < 0 ? M->K : 0;
    double g = as * M->grid1[s + k], e = as * M->es1[s + k];
    return MAXD(MAXD(g, e), pos_minimum(M, k, a)) + pos_liquidity(M, k, a);
}

typedef struct {
    double im, mm, cross_im, grid, es, var, minimum, liq, iso;
    int64_t worst;
    int finite;
} AcctOut;

typedef struct IsaOps {
    const char *name;
    void (*fhs_kernel)(const double *rh, Py_ssize_t Hp, Py_ssize_t c0, Py_ssize_t c1, const int32_t *ck,
                       const double *cq, Py_ssize_t nc, double *loss, double *bmax);
    double (*grid_margin)(const Model *M, Scratch *w, const int32_t *ck, const double *cq, Py_ssize_t nc,
                          Py_ssize_t *nt_out, int *finite, int keep);
    void (*fhs_select)(const Model *M, Scratch *w, const int32_t *ck, const double *cq, Py_ssize_t nc,
                       double *loss, double *bmax, AcctOut *o);
} IsaOps;

/* The hot loops (FHS kernel, grid margin, ES/VaR selection), one copy per instruction set:
 * portable C, AVX2+FMA and AVX-512; the model picks one when it is built (isa_pick). */
#define ISA_SFX(name) name##_generic
#define ISA_TARGET
#define ISA_LEVEL 0
#include "_ccore_isa.h"
#undef ISA_SFX
#undef ISA_TARGET
#undef ISA_LEVEL
#if MF_X86
#define ISA_SFX(name) name##_avx2
#define ISA_TARGET __attribute__((target("avx2,fma,bmi,bmi2,popcnt")))
#define ISA_LEVEL 1
#include "_ccore_isa.h"
#undef ISA_SFX
#undef ISA_TARGET
#undef ISA_LEVEL
#define ISA_SFX(name) name##_avx512
#define ISA_TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2,popcnt")))
#define ISA_LEVEL 2
#include "_ccore_isa.h"
#undef ISA_SFX
#undef ISA_TARGET
#undef ISA_LEVEL
#endif

static const IsaOps isa_ops[3] = {
    {"generic", fhs_kernel_generic, grid_margin_generic, fhs_select_generic},
#if MF_X86
    {"avx2", fhs_kernel_avx2, grid_margin_avx2, fhs_select_avx2},
    {"avx512", fhs_kernel_avx512, grid_margin_avx512, fhs_select_avx512},
#endif
};

/* The best level this CPU runs, capped by MARGINFLOW_CORE_ISA=generic|avx2|avx512 (tests,
 * comparisons); -1 with an exception set on a bad value. */
static int isa_pick(void)
{
    int best = 0;
#if MF_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        best = 1;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
            best = 2;
    }
#endif
    const char *env = getenv("MARGINFLOW_CORE_ISA");
    if (env && *env) {
        int want = !strcmp(env, "generic") ? 0 : !strcmp(env, "avx2") ? 1 : !strcmp(env, "avx512") ? 2 : -1;
        if (want < 0) {
            PyErr_Format(PyExc_ValueError, "MARGINFLOW_CORE_ISA must be generic, avx2 or avx512, got '%s'", env);
            return -1;
        }
        if (want < best) best = want;
    }
    return best;
}

/* First pass over one account's n positions: isolated IM (into iso_im, may be NULL),
 * minimum and liquidity of the cross positions, which are listed in ck/cq/cpos
 * (cq = -(size * scale), scale = 1 when sc is NULL). Returns the number of cross positions. */
static Py_ssize_t account_prep(const Model *M, Py_ssize_t n, const int32_t *k, const double *q, const uint8_t *iso,
                               const double *sc, double *iso_im, int32_t *ck, double *cq, int32_t *cpos, AcctOut *o)
{
    Py_ssize_t nc = 0;
    double iso_total = 0.0, mn = 0.0, lq = 0.0;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (iso[j]) {
            double v = pos_isolated(M, k[j], q[j], sc ? sc[j] : 1.0);
            if (iso_im) iso_im[j] = v;
            iso_total += v;
        }
        else {
            double a = fabs(q[j]);
            mn += pos_minimum(M, k[j], a);
            lq += pos_liquidity(M, k[j], a);
            ck[nc] = k[j];
            cq[nc] = sc ? -(q[j] * sc[j]) : -q[j];
            cpos[nc] = (int32_t)j;
            nc++;
            if (iso_im) iso_im[j] = 0.0;
        }
    }
    o->finite = 1;
    o->minimum = mn;
    o->liq = lq;
    o->iso = iso_total;
    return nc;
}

/* Second pass, once loss/bmax hold the historical losses of the nc cross positions. */
static void account_finish(const Model *M, Scratch *w, const int32_t *ck, const double *cq, Py_ssize_t nc,
                           double *loss, double *bmax, AcctOut *o)
{
    if (nc == 0) {
        o->grid = o->es = o->var = o->cross_im = 0.0;
        o->worst = -1;
    }
    else {
        Py_ssize_t nt;
        o->grid = M->GT ? M->ops->grid_margin(M, w, ck, cq, nc, &nt, &o->finite, 0) : 0.0;
        M->ops->fhs_select(M, w, ck, cq, nc, loss, bmax, o);
        o->cross_im = MAXD(MAXD(o->grid, o->es), o->minimum) + o->liq;
    }
    o->im = o->cross_im + o->iso;
    o->mm = M->mm * o->im;
    if (!isfinite(o->im)) o->finite = 0;
}

/* Margin of one account's n positions (what-if, explain). */
static void account_margin(const Model *M, Scratch *w, Py_ssize_t n, const int32_t *k, const double *q,
                           const uint8_t *iso, const double *sc, double *iso_im, AcctOut *o)
{
    Py_ssize_t nc = account_prep(M, n, k, q, iso, sc, iso_im, w->ck, w->cq, w->cpos, o);
    if (nc) M->ops->fhs_kernel(M->rh, M->ld, 0, M->Hp, w->ck, w->cq, nc, w->loss, w->bmax);
    account_finish(M, w, w->ck, w->cq, nc, w->loss, w->bmax, o);
}

/* ------------------------------------------------------------------ compute (all accounts) */

/* Threads take chunks of CHUNK consecutive accounts from a shared counter (dynamic split:
 * the load stays balanced whatever the accounts cost and whatever else runs on the CPUs).
 * Each account is margined in one go: validation, first pass, historical losses (the
 * kernel), grid margin and ES/VaR while its losses are still in L1. The risk arrays
 * (K x ld doubles, 1.6 MB here) stay in each core's L2. */
#define CHUNK 64

typedef struct {
    const Model *M;
    const int64_t *indptr;
    const int32_t *inst;
    const double *size;
    const uint8_t *iso;
    const double *scale;   /* NULL: 1 for every position */
    Py_ssize_t N;
    Py_ssize_t next;   /* first account of the next chunk (atomic) */
    int stop;          /* a bad position was found: take no new chunk (atomic) */
    Scratch scr[MAX_THREADS];
    /* outputs */
    double *im, *mm, *cross_im, *grid, *es, *var, *minimum, *liq, *iso_im;
    int64_t *worst;
    /* errors, per thread: first bad position and its kind (1 instrument, 2 size), first
     * account whose margin overflowed; chunks are taken in ascending order, so every chunk
     * below a bad one is finished and the lowest over the threads is the first overall */
    Py_ssize_t err_pos[MAX_THREADS];
    int err_kind[MAX_THREADS];
    Py_ssize_t err_ovf[MAX_THREADS];
} ComputeCtx;

static void compute_work(void *p, int tid, int nthreads)
{
    ComputeCtx *c = (ComputeCtx *)p;
    const Model *M = c->M;
    Scratch *w = &c->scr[tid];
    c->err_pos[tid] = -1;
    c->err_ovf[tid] = -1;
    for (;;) {
        if (__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) return;
        Py_ssize_t i0 = __atomic_fetch_add(&c->next, CHUNK, __ATOMIC_RELAXED);
        if (i0 >= c->N) return;
        Py_ssize_t i1 = i0 + CHUNK < c->N ? i0 + CHUNK : c->N;
        for (Py_ssize_t i = i0; i < i1; i++) {
            Py_ssize_t p0 = c->indptr[i], p1 = c->indptr[i + 1];
            for (Py_ssize_t pp = p0; pp < p1; pp++) {
                int32_t k = c->inst[pp];
                int kind = (k < 0 || k >= M->K) ? 1 : !isfinite(c->size[pp]) ? 2 : 0;
                if (kind) {
                    c->err_pos[tid] = pp;
                    c->err_kind[tid] = kind;
                    __atomic_store_n(&c->stop, 1, __ATOMIC_RELAXED);
                    return;
                }
            }
            AcctOut o;
            Py_ssize_t nc = account_prep(M, p1 - p0, c->inst + p0, c->size + p0, c->iso + p0,
                                         c->scale ? c->scale + p0 : NULL, c->iso_im + p0, w->ck, w->cq, w->cpos,
                                         &o);
            if (nc) M->ops->fhs_kernel(M->rh, M->ld, 0, M->Hp, w->ck, w->cq, nc, w->loss, w->bmax);
            account_finish(M, w, w->ck, w->cq, nc, w->loss, w->bmax, &o);
            if (!o.finite && c->err_ovf[tid] < 0) c->err_ovf[tid] = i;
            c->im[i] = o.im;
            c->mm[i] = o.mm;
            c->cross_im[i] = o.cross_im;
            c->grid[i] = o.grid;
            c->es[i] = o.es;
            c->var[i] = o.var;
            c->worst[i] = o.worst;
            c->minimum[i] = o.minimum;
            c->liq[i] = o.liq;
        }
    }
}

static int dict_set(PyObject *d, const char *key, PyObject *v)
{
    if (!v) return -1;
    int r = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return r;
}

/* The optional per-position scale of the scenario losses: None (NULL, every scale 1) or
 * float64[n], each finite and > 0. */
static int get_scale(PyObject *obj, npy_intp n, PyArrayObject **out)
{
    *out = NULL;
    if (!obj || obj == Py_None) return 0;
    if (!(*out = get_array(obj, "scale", NPY_FLOAT64, 1)) || check_len(*out, "scale", n) < 0 ||
        check_values(PyArray_DATA(*out), n, CHK_POS, "scale") < 0) {
        Py_CLEAR(*out);
        return -1;
    }
    return 0;
}

static PyObject *model_compute(Model *M, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"indptr", "instrument", "size", "isolated", "n_threads", "scale", NULL};
    PyObject *oip, *oin, *osz, *oiso, *onth = NULL, *osc = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|O$O:compute", kwlist, &oip, &oin, &osz, &oiso, &onth, &osc))
        return NULL;
    PyArrayObject *indptr = NULL, *inst = NULL, *size = NULL, *iso = NULL, *scale = NULL;
    PyArrayObject *outs[11] = {NULL};
    PyObject *ret = NULL;
    ComputeCtx *c = NULL;
    int nth;
    if (!(indptr = get_array(oip, "indptr", NPY_INT64, 1))) goto done;
    if (!(inst = get_array(oin, "instrument", NPY_INT32, 1))) goto done;
    npy_intp nnz = PyArray_DIM(inst, 0);
    if (!(size = get_array(osz, "size", NPY_FLOAT64, 1)) || check_len(size, "size", nnz) < 0) goto done;
    if (!(iso = get_flags(oiso, "isolated")) || check_len(iso, "isolated", nnz) < 0) goto done;
    if (get_scale(osc, nnz, &scale) < 0) goto done;
    if (get_threads(onth, &nth) < 0) goto done;
    npy_intp np1 = PyArray_DIM(indptr, 0);
    const int64_t *ip = PyArray_DATA(indptr);
    if (np1 < 1) {
        PyErr_SetString(PyExc_ValueError, "indptr must have at least 1 element");
        goto done;
    }
    if (ip[0] != 0) {
        PyErr_SetString(PyExc_ValueError, "indptr[0] must be 0");
        goto done;
    }
    Py_ssize_t max_pos = 0;
    for (npy_intp i = 1; i < np1; i++) {
        if (ip[i] < ip[i - 1]) {
            PyErr_Format(PyExc_ValueError, "indptr must be non-decreasing: indptr[%zd] < indptr[%zd]",
                         (Py_ssize_t)i, (Py_ssize_t)(i - 1));
            goto done;
        }
        if (ip[i] - ip[i - 1] > max_pos) max_pos = (Py_ssize_t)(ip[i] - ip[i - 1]);
    }
    if (ip[np1 - 1] != nnz) {
        PyErr_Format(PyExc_ValueError, "indptr[-1] = %lld must equal the number of positions %zd",
                     (long long)ip[np1 - 1], (Py_ssize_t)nnz);
        goto done;
    }
    Py_ssize_t N = np1 - 1;
    npy_intp dn = N;
    for (int i = 0; i < 11; i++) {
        int typ = i == 9 ? NPY_INT64 : NPY_FLOAT64;
        /* no zeroing: every element is written (isolated_im by the first pass) */
        outs[i] = (PyArrayObject *)PyArray_EMPTY(1, i == 10 ? &nnz : &dn, typ, 0);
        if (!outs[i]) goto done;
    }
    if (!(c = PyMem_Calloc(1, sizeof *c))) {
        PyErr_NoMemory();
        goto done;
    }
    /* fewer threads for small jobs: starting one costs ~20-50 us */
    if (nth > 1 && nnz + N < 2000) nth = 1;
    for (int t = 0; t < nth; t++)
        if (scratch_init(&c->scr[t], M, max_pos) < 0) {
            for (int s = 0; s < t; s++) free(c->scr[s].block);
            nth = 0;
            PyErr_NoMemory();
            goto done;
        }
    c->M = M;
    c->indptr = ip;
    c->inst = PyArray_DATA(inst);
    c->size = PyArray_DATA(size);
    c->iso = PyArray_DATA(iso);
    c->scale = scale ? PyArray_DATA(scale) : NULL;
    c->N = N;
    c->im = PyArray_DATA(outs[0]);
    c->mm = PyArray_DATA(outs[1]);
    c->cross_im = PyArray_DATA(outs[2]);
    c->grid = PyArray_DATA(outs[3]);
    c->es = PyArray_DATA(outs[4]);
    c->var = PyArray_DATA(outs[5]);
    c->minimum = PyArray_DATA(outs[6]);
    c->liq = PyArray_DATA(outs[7]);
    c->worst = PyArray_DATA(outs[9]);
    c->iso_im = PyArray_DATA(outs[10]);
    Py_BEGIN_ALLOW_THREADS
    run_parallel(compute_work, c, nth);
    Py_END_ALLOW_THREADS
    for (int t = 0; t < nth; t++) free(c->scr[t].block);
    /* the first bad position overall is the lowest over the threads */
    int et = -1;
    for (int t = 0; t < nth; t++)
        if (c->err_pos[t] >= 0 && (et < 0 || c->err_pos[t] < c->err_pos[et])) et = t;
    if (et >= 0) {
        int t = et;
        Py_ssize_t pp = c->err_pos[t];
        if (c->err_kind[t] == 1)
            PyErr_Format(PyExc_ValueError, "instrument[%zd] = %d is out of range [0, %zd)", pp, (int)c->inst[pp],
                         M->K);
        else
            PyErr_Format(PyExc_ValueError, "size[%zd] must be finite", pp);
        goto done;
    }
    for (int t = 0; t < nth; t++)
        if (c->err_ovf[t] >= 0 && (et < 0 || c->err_ovf[t] < c->err_ovf[et])) et = t;
    if (et >= 0) {
        PyErr_Format(PyExc_ValueError, "margin overflow in account %zd: losses or margin not finite (sizes too large?)",
                     c->err_ovf[et]);
        goto done;
    }
    {
        static const char *keys[11] = {"im", "mm", "cross_im", "grid", "es", "var", "minimum",
                                       "liquidity", NULL, "worst", "isolated_im"};
        PyObject *d = PyDict_New();
        if (!d) goto done;
        for (int i = 0; i < 11; i++) {
            if (!keys[i]) continue;
            if (PyDict_SetItemString(d, keys[i], (PyObject *)outs[i]) < 0) {
                Py_DECREF(d);
                goto done;
            }
        }
        ret = d;
    }
done:
    PyMem_Free(c);
    Py_XDECREF(indptr);
    Py_XDECREF(inst);
    Py_XDECREF(size);
    Py_XDECREF(iso);
    Py_XDECREF(scale);
    for (int i = 0; i < 11; i++) Py_XDECREF(outs[i]);
    return ret;
}

/* ------------------------------------------------------------------ one account */

typedef struct {
    PyArrayObject *inst, *size, *iso, *dinst, *dsize;
} OneArgs;

static void one_release(OneArgs *a)
{
    Py_XDECREF(a->inst);
    Py_XDECREF(a->size);
    Py_XDECREF(a->iso);
    Py_XDECREF(a->dinst);
    Py_XDECREF(a->dsize);
}

static int check_positions(const Model *M, const int32_t *k, const double *q, Py_ssize_t n, const char *ni,
                           const char *ns)
{
    for (Py_ssize_t p = 0; p < n; p++) {
        if (k[p] < 0 || k[p] >= M->K) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] = %d is out of range [0, %zd)", ni, p, (int)k[p], M->K);
            return -1;
        }
        if (!isfinite(q[p])) return bad_value_1d(ns, p, "finite");
    }
    return 0;
}

static int one_args(const Model *M, OneArgs *a, PyObject *const *args, Py_ssize_t nargs, int with_delta)
{
    memset(a, 0, sizeof *a);
    if (!(a->inst = get_array(args[0], "instrument", NPY_INT32, 1))) return -1;
    npy_intp n = PyArray_DIM(a->inst, 0);
    if (!(a->size = get_array(args[1], "size", NPY_FLOAT64, 1)) || check_len(a->size, "size", n) < 0) return -1;
    if (!(a->iso = get_flags(args[2], "isolated")) || check_len(a->iso, "isolated", n) < 0) return -1;
    if (with_delta) {
        if (!(a->dinst = get_array(args[3], "delta_instrument", NPY_INT32, 1))) return -1;
        if (!(a->dsize = get_array(args[4], "delta_size", NPY_FLOAT64, 1)) ||
            check_len(a->dsize, "delta_size", PyArray_DIM(a->dinst, 0)) < 0)
            return -1;
    }
    if (check_positions(M, PyArray_DATA(a->inst), PyArray_DATA(a->size), n, "instrument", "size") < 0) return -1;
    if (with_delta && check_positions(M, PyArray_DATA(a->dinst), PyArray_DATA(a->dsize), PyArray_DIM(a->dinst, 0),
                                      "delta_instrument", "delta_size") < 0)
        return -1;
    return 0;
}

static PyObject *scalars_dict(const AcctOut *o)
{
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    if (dict_set(d, "im", PyFloat_FromDouble(o->im)) < 0 || dict_set(d, "mm", PyFloat_FromDouble(o->mm)) < 0 ||
        dict_set(d, "cross_im", PyFloat_FromDouble(o->cross_im)) < 0 ||
        dict_set(d, "grid", PyFloat_FromDouble(o->grid)) < 0 || dict_set(d, "es", PyFloat_FromDouble(o->es)) < 0 ||
        dict_set(d, "var", PyFloat_FromDouble(o->var)) < 0 ||
        dict_set(d, "worst", PyLong_FromLongLong(o->worst)) < 0 ||
        dict_set(d, "minimum", PyFloat_FromDouble(o->minimum)) < 0 ||
        dict_set(d, "liquidity", PyFloat_FromDouble(o->liq)) < 0 ||
        dict_set(d, "isolated_im", PyFloat_FromDouble(o->iso)) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static int overflow_error(void)
{
    PyErr_SetString(PyExc_ValueError, "margin overflow: losses or margin not finite (sizes too large?)");
    return -1;
}

/* what_if(instrument, size, isolated, delta_instrument, delta_size): positional or keyword
 * arguments are parsed by hand (METH_FASTCALL) to keep the call cheap. */
static PyObject *model_what_if(Model *M, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *names[5] = {"instrument", "size", "isolated", "delta_instrument", "delta_size"};
    PyObject *a5[5] = {NULL};
    if (nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "what_if() takes 5 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) a5[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        const char *kn = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
        int f = -1;
        for (int j = 0; kn && j < 5; j++)
            if (!strcmp(kn, names[j])) f = j;
        if (f < 0 || a5[f]) {
            PyErr_Format(PyExc_TypeError, "what_if() got an unexpected or repeated argument %R",
                         PyTuple_GET_ITEM(kwnames, i));
            return NULL;
        }
        a5[f] = args[nargs + i];
    }
    for (int j = 0; j < 5; j++)
        if (!a5[j]) {
            PyErr_Format(PyExc_TypeError, "what_if() missing required argument '%s'", names[j]);
            return NULL;
        }
    OneArgs a;
    PyObject *ret = NULL;
    Scratch w = {0};
    if (one_args(M, &a, a5, 5, 1) < 0) goto done;
    Py_ssize_t n = PyArray_DIM(a.inst, 0), d = PyArray_DIM(a.dinst, 0);
    if (scratch_init(&w, M, n + d) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    /* merged positions: reuse three slices of one malloc */
    size_t need = (size_t)(n + d) * (sizeof(int32_t) + sizeof(double) + 1) + 16;
    char *buf = malloc(need);
    if (!buf) {
        PyErr_NoMemory();
        goto done;
    }
    double *q = (double *)buf;
    int32_t *k = (int32_t *)(q + n + d);
    uint8_t *iso = (uint8_t *)(k + n + d);
    memcpy(q, PyArray_DATA(a.size), (size_t)n * sizeof(double));
    memcpy(k, PyArray_DATA(a.inst), (size_t)n * sizeof(int32_t));
    memcpy(iso, PyArray_DATA(a.iso), (size_t)n);
    Py_ssize_t nn = n;
    const int32_t *dk = PyArray_DATA(a.dinst);
    const double *dq = PyArray_DATA(a.dsize);
    for (Py_ssize_t j = 0; j < d; j++) {
        Py_ssize_t p = 0;
        while (p < nn && (iso[p] || k[p] != dk[j])) p++;
        if (p < nn) q[p] = q[p] + dq[j];
        else {
            k[nn] = dk[j];
            q[nn] = dq[j];
            iso[nn] = 0;
            nn++;
        }
    }
    AcctOut o;
    account_margin(M, &w, nn, k, q, iso, NULL, NULL, &o);
    free(buf);
    if (!o.finite) {
        overflow_error();
        goto done;
    }
    ret = scalars_dict(&o);
done:
    free(w.block);
    one_release(&a);
    return ret;
}

/* ------------------------------------------------------------------ explain */

typedef struct {
    double v;
    int32_t i;
} VI;

static int vi_cmp(const void *x, const void *y)
{
    const VI *a = x, *b = y;
    if (a->v > b->v) return -1;
    if (a->v < b->v) return 1;
    return (a->i > b->i) - (a->i < b->i);
}

static PyObject *new_vec(npy_intp n, int typ, void **data)
{
    PyObject *a = PyArray_ZEROS(1, &n, typ, 0);
    if (a) *data = PyArray_DATA((PyArrayObject *)a);
    return a;
}

static PyObject *model_explain(Model *M, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"instrument", "size", "isolated", "scale", NULL};
    PyObject *o3[3], *osc = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$O:explain", kwlist, &o3[0], &o3[1], &o3[2], &osc)) return NULL;
    OneArgs a;
    PyObject *ret = NULL;
    Scratch w = {0};
    VI *order = NULL;
    PyArrayObject *scale = NULL;
    if (one_args(M, &a, o3, 3, 0) < 0) goto done;
    Py_ssize_t n = PyArray_DIM(a.inst, 0);
    if (get_scale(osc, n, &scale) < 0) goto done;
    const double *sc = scale ? PyArray_DATA(scale) : NULL;
    const int32_t *k = PyArray_DATA(a.inst);
    const double *q = PyArray_DATA(a.size);
    const uint8_t *iso = PyArray_DATA(a.iso);
    if (scratch_init(&w, M, n) < 0 || !(order = malloc((size_t)(M->H + 1) * sizeof(VI)))) {
        PyErr_NoMemory();
        goto done;
    }
    double *p_grid = NULL, *p_es = NULL, *p_worst = NULL, *p_min = NULL, *p_liq = NULL, *p_iso = NULL,
           *u_grid = NULL, *u_es = NULL;
    int64_t *u_scen = NULL, *es_sc = NULL;
    PyObject *arrs[10];
    arrs[0] = new_vec(n, NPY_FLOAT64, (void **)&p_grid);
    arrs[1] = new_vec(n, NPY_FLOAT64, (void **)&p_es);
    arrs[2] = new_vec(n, NPY_FLOAT64, (void **)&p_worst);
    arrs[3] = new_vec(n, NPY_FLOAT64, (void **)&p_min);
    arrs[4] = new_vec(n, NPY_FLOAT64, (void **)&p_liq);
    arrs[5] = new_vec(n, NPY_FLOAT64, (void **)&p_iso);
    arrs[6] = new_vec(M->U, NPY_FLOAT64, (void **)&u_grid);
    arrs[7] = new_vec(M->U, NPY_INT64, (void **)&u_scen);
    arrs[8] = new_vec(M->U, NPY_FLOAT64, (void **)&u_es);
    Py_ssize_t m = M->m, nc = 0;
    for (Py_ssize_t j = 0; j < n; j++) nc += !iso[j];
    arrs[9] = new_vec(nc ? m : 0, NPY_INT64, (void **)&es_sc);
    static const char *keys[10] = {"position_grid", "position_es", "position_worst_loss", "position_minimum",
                                   "position_liquidity", "position_isolated_im", "underlying_grid",
                                   "underlying_grid_scenario", "underlying_es", "es_scenarios"};
    int ok = 1;
    for (int i = 0; i < 10; i++) ok &= arrs[i] != NULL;
    if (ok) {
        AcctOut o;
        account_margin(M, &w, n, k, q, iso, sc, p_iso, &o);
        if (!o.finite) {
            overflow_error();
            ok = 0;
        }
        else {
            for (Py_ssize_t j = 0; j < n; j++) {
                p_min[j] = pos_minimum(M, k[j], fabs(q[j]));
                p_liq[j] = pos_liquidity(M, k[j], fabs(q[j]));
            }
            for (Py_ssize_t u = 0; u < M->U; u++) u_scen[u] = -1;
            /* w->ck/cq/cpos still hold the cross positions; w->loss their FHS losses */
            if (nc) {
                const Py_ssize_t gt = M->GT, GTp = M->GTp, H = M->H;
                if (gt) {
                    Py_ssize_t nt;
                    int fin = 1;
                    M->ops->grid_margin(M, &w, w.ck, w.cq, nc, &nt, &fin, 1);
                    for (Py_ssize_t t = 0; t < nt; t++) {
                        Py_ssize_t u = w.touched[t];
                        const double *g = w.gacc + u * GTp;
                        w.flag[u] = 0;
                        double mx = 0.0;
                        Py_ssize_t arg = -1;
                        for (Py_ssize_t i = 0; i < gt; i++) {
                            double x = g[i] * M->w[i];
                            if (x > mx) {
                                mx = x;
                                arg = i;
                            }
                        }
                        u_grid[u] = mx;
                        u_scen[u] = arg;
                        if (arg < 0) continue;
                        for (Py_ssize_t j = 0; j < nc; j++)
                            if (M->und[w.ck[j]] == u)
                                p_grid[w.cpos[j]] = w.cq[j] * M->rg[(Py_ssize_t)w.ck[j] * GTp + arg] * M->w[arg];
                    }
                }
                for (Py_ssize_t s = 0; s < H; s++) {
                    order[s].v = w.loss[s];
                    order[s].i = (int32_t)s;
                }
                qsort(order, (size_t)H, sizeof(VI), vi_cmp);
                for (Py_ssize_t i = 0; i < m; i++) es_sc[i] = order[i].i;
                for (Py_ssize_t j = 0; j < nc; j++) {
                    const double *r = M->rh + (Py_ssize_t)w.ck[j] * M->ld;
                    double s = 0.0;
                    for (Py_ssize_t i = 0; i < m; i++) s += w.cq[j] * r[order[i].i];
                    Py_ssize_t jp = w.cpos[j];
                    p_es[jp] = s / (double)m;
                    p_worst[jp] = w.cq[j] * r[o.worst];
                    u_es[M->und[w.ck[j]]] += p_es[jp];
                }
            }
            ret = scalars_dict(&o);
            for (int i = 0; ret && i < 10; i++)
                if (PyDict_SetItemString(ret, keys[i], arrs[i]) < 0) Py_CLEAR(ret);
        }
    }
    for (int i = 0; i < 10; i++) Py_XDECREF(arrs[i]);
done:
    free(order);
    free(w.block);
    one_release(&a);
    Py_XDECREF(scale);
    return ret;
}

/* ------------------------------------------------------------------ construction */

static int model_init(Model *M, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"risk", "underlying", "n_grid", "tail_weights", "es_level", "unit_notional",
                             "mark_value", "half_spread", "depth", "bracket_floor", "bracket_rate",
                             "mm_factor", NULL};
    PyObject *o[12];
    if (M->rh) {
        PyErr_SetString(PyExc_RuntimeError, "MarginModel is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOOO:MarginModel", kwlist, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11]))
        return -1;
    PyArrayObject *risk = NULL, *und = NULL, *tw = NULL, *inst[4] = {NULL}, *bf = NULL, *br = NULL;
    int rc = -1;
    Py_ssize_t G;
    double es_level, mm;
    static const char *inames[4] = {"unit_notional", "mark_value", "half_spread", "depth"};
    if (!(risk = get_array(o[0], "risk", NPY_FLOAT64, 2))) goto done;
    npy_intp K = PyArray_DIM(risk, 0), S = PyArray_DIM(risk, 1);
    if (!(und = get_array(o[1], "underlying", NPY_INT32, 1)) || check_len(und, "underlying", K) < 0) goto done;
    if (get_int(o[2], "n_grid", &G) < 0) goto done;
    if (!(tw = get_array(o[3], "tail_weights", NPY_FLOAT64, 1))) goto done;
    if (get_real(o[4], "es_level", &es_level) < 0) goto done;
    for (int i = 0; i < 4; i++)
        if (!(inst[i] = get_array(o[5 + i], inames[i], NPY_FLOAT64, 1)) || check_len(inst[i], inames[i], K) < 0)
            goto done;
    if (!(bf = get_array(o[9], "bracket_floor", NPY_FLOAT64, 2))) goto done;
    if (!(br = get_array(o[10], "bracket_rate", NPY_FLOAT64, 2)) ||
        check_shape(br, "bracket_rate", 2, PyArray_DIMS(bf)) < 0)
        goto done;
    if (get_real(o[11], "mm_factor", &mm) < 0) goto done;
    npy_intp U = PyArray_DIM(bf, 0), B = PyArray_DIM(bf, 1), T = PyArray_DIM(tw, 0);
    if (G < 0) {
        PyErr_SetString(PyExc_ValueError, "n_grid must be >= 0");
        goto done;
    }
    if (S < G + T + 1) {
        PyErr_Format(PyExc_ValueError,
                     "risk has %zd scenario columns, need n_grid + n_tail (%zd + %zd) + at least 1 historical",
                     (Py_ssize_t)S, G, (Py_ssize_t)T);
        goto done;
    }
    if (B < 1) {
        PyErr_SetString(PyExc_ValueError, "bracket_floor must have at least 1 bracket");
        goto done;
    }
    if (!(es_level > 0.0 && es_level < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "es_level must be in (0, 1)");
        goto done;
    }
    if (!(mm > 0.0 && mm <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "mm_factor must be in (0, 1]");
        goto done;
    }
    const double *R = PyArray_DATA(risk);
    for (npy_intp i = 0; i < K * S; i++)
        if (!isfinite(R[i])) {
            bad_value_2d("risk", i / S, i % S, "finite");
            goto done;
        }
    if (check_range_i32(PyArray_DATA(und), K, U, "underlying") < 0) goto done;
    if (check_values(PyArray_DATA(tw), T, CHK_NONNEG, "tail_weights") < 0) goto done;
    static const int how[4] = {CHK_NONNEG, CHK_NONNEG, CHK_NONNEG, CHK_POS};
    for (int i = 0; i < 4; i++)
        if (check_values(PyArray_DATA(inst[i]), K, how[i], inames[i]) < 0) goto done;
    const double *fl = PyArray_DATA(bf), *rt = PyArray_DATA(br);
    for (npy_intp u = 0; u < U; u++)
        for (npy_intp b = 0; b < B; b++) {
            double f = fl[u * B + b];
            if (b == 0 ? f != 0.0 : !(isfinite(f) && f > fl[u * B + b - 1])) {
                bad_value_2d("bracket_floor", u, b, "finite, 0 in the first bracket and increasing");
                goto done;
            }
        }
    for (npy_intp u = 0; u < U; u++)
        for (npy_intp b = 0; b < B; b++) {
            double r = rt[u * B + b], prev = b ? rt[u * B + b - 1] : 0.0;
            if (!(isfinite(r) && r >= prev && r <= 1.0)) {
                bad_value_2d("bracket_rate", u, b, "finite, in [0, 1] and non-decreasing");
                goto done;
            }
        }

    {
        int lvl = isa_pick();
        if (lvl < 0) goto done;
        M->ops = &isa_ops[lvl];
    }
    M->K = K;
    M->S = S;
    M->G = G;
    M->T = T;
    M->GT = G + T;
    M->H = S - G - T;
    M->U = U;
    M->B = B;
    M->GTp = round_up(M->GT, 4);
    M->Hp = round_up(M->H, CW);
    M->ld = M->Hp + 8; /* not a multiple of 4 KiB: rows at the same column land in different L1 sets */
    M->nb = M->Hp / 8;
    M->es_level = es_level;
    M->mm = mm;
    {
        double mm_ = ceil((1.0 - es_level) * (double)M->H - 1e-9);
        M->m = mm_ < 1.0 ? 1 : (Py_ssize_t)mm_;
    }
    M->rg = aligned_zalloc((size_t)(K * M->GTp) * sizeof(double));
    M->rh = aligned_zalloc((size_t)(K * M->ld) * sizeof(double));
    M->w = aligned_zalloc((size_t)M->GTp * sizeof(double));
    M->bound_g = aligned_zalloc((size_t)K * sizeof(double));
    M->bound_h = aligned_zalloc((size_t)K * sizeof(double));
    M->und = aligned_zalloc((size_t)K * sizeof(int32_t));
    M->notional = aligned_zalloc((size_t)K * sizeof(double));
    M->liq_unit = aligned_zalloc((size_t)K * sizeof(double));
    M->depth = aligned_zalloc((size_t)K * sizeof(double));
    M->floor_ = aligned_zalloc((size_t)(U * B) * sizeof(double));
    M->rate = aligned_zalloc((size_t)(U * B) * sizeof(double));
    M->cum = aligned_zalloc((size_t)(U * B) * sizeof(double));
    M->grid1 = aligned_zalloc((size_t)(2 * K) * sizeof(double));
    M->es1 = aligned_zalloc((size_t)(2 * K) * sizeof(double));
    double *tmp = malloc((size_t)(2 * (M->H + M->m) + 1) * sizeof(double));
    if (!M->rg || !M->rh || !M->w || !M->bound_g || !M->bound_h || !M->und || !M->notional || !M->liq_unit ||
        !M->depth || !M->floor_ || !M->rate || !M->cum || !M->grid1 || !M->es1 || !tmp) {
        free(tmp);
        PyErr_NoMemory();
        goto done;
    }
    const double *twd = PyArray_DATA(tw), *mv = PyArray_DATA(inst[1]), *hs = PyArray_DATA(inst[2]);
    for (Py_ssize_t i = 0; i < M->GT; i++) M->w[i] = i < G ? 1.0 : twd[i - G];
    memcpy(M->und, PyArray_DATA(und), (size_t)K * sizeof(int32_t));
    memcpy(M->notional, PyArray_DATA(inst[0]), (size_t)K * sizeof(double));
    memcpy(M->depth, PyArray_DATA(inst[3]), (size_t)K * sizeof(double));
    for (npy_intp i = 0; i < K; i++) M->liq_unit[i] = mv[i] * hs[i];
    memcpy(M->floor_, fl, (size_t)(U * B) * sizeof(double));
    memcpy(M->rate, rt, (size_t)(U * B) * sizeof(double));
    for (npy_intp u = 0; u < U; u++)
        for (npy_intp b = 1; b < B; b++)
            M->cum[u * B + b] = M->cum[u * B + b - 1] + fl[u * B + b] * (rt[u * B + b] - rt[u * B + b - 1]);
    double *neg = tmp, *heap = tmp + M->H;
    for (npy_intp k = 0; k < K; k++) {
        const double *row = R + k * S;
        double *g = M->rg + k * M->GTp, *h = M->rh + k * M->ld;
        double bg = 0.0, bh = 0.0, gl = 0.0, gs = 0.0;
        for (Py_ssize_t i = 0; i < M->GT; i++) {
            g[i] = row[i];
            bg = MAXD(bg, fabs(row[i]));
            double x = row[i] * M->w[i];
            if (-x > gl) gl = -x;
            if (x > gs) gs = x;
        }
        for (Py_ssize_t i = 0; i < M->H; i++) {
            h[i] = row[M->GT + i];
            bh = MAXD(bh, fabs(h[i]));
            neg[i] = -h[i];
        }
        M->bound_g[k] = bg;
        M->bound_h[k] = bh;
        M->grid1[k] = gl;
        M->grid1[K + k] = gs;
        M->es1[k] = top_m(neg, M->H, M->m, heap) / (double)M->m;
        M->es1[K + k] = top_m(h, M->H, M->m, heap) / (double)M->m;
    }
    free(tmp);
    rc = 0;
done:
    Py_XDECREF(risk);
    Py_XDECREF(und);
    Py_XDECREF(tw);
    for (int i = 0; i < 4; i++) Py_XDECREF(inst[i]);
    Py_XDECREF(bf);
    Py_XDECREF(br);
    return rc;
}

static void model_free_buffers(Model *M)
{
    double **bufs[] = {&M->rg, &M->rh, &M->w, &M->bound_g, &M->bound_h, &M->notional, &M->liq_unit,
                       &M->depth, &M->floor_, &M->rate, &M->cum, &M->grid1, &M->es1};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
    free(M->und);
    M->und = NULL;
}

static void model_dealloc(Model *M)
{
    PyTypeObject *tp = Py_TYPE(M);
    model_free_buffers(M);
    tp->tp_free((PyObject *)M);
    Py_DECREF(tp);
}

static int model_ready(Model *M)
{
    if (M->rh) return 0;
    PyErr_SetString(PyExc_RuntimeError, "MarginModel is not initialised");
    return -1;
}

static PyObject *model_compute_checked(Model *M, PyObject *a, PyObject *k)
{
    return model_ready(M) < 0 ? NULL : model_compute(M, a, k);
}

static PyObject *model_what_if_checked(Model *M, PyObject *const *a, Py_ssize_t n, PyObject *kw)
{
    return model_ready(M) < 0 ? NULL : model_what_if(M, a, n, kw);
}

static PyObject *model_explain_checked(Model *M, PyObject *a, PyObject *k)
{
    return model_ready(M) < 0 ? NULL : model_explain(M, a, k);
}

#define GET_SSIZE(name, field) \
    static PyObject *get_##name(Model *M, void *c) { return PyLong_FromSsize_t(M->field); }
GET_SSIZE(n_instruments, K)
GET_SSIZE(n_underlyings, U)
GET_SSIZE(n_grid, G)
GET_SSIZE(n_tail, T)
GET_SSIZE(n_hist, H)
GET_SSIZE(n_worst, m)
static PyObject *get_es_level(Model *M, void *c) { return PyFloat_FromDouble(M->es_level); }
static PyObject *get_mm_factor(Model *M, void *c) { return PyFloat_FromDouble(M->mm); }

static PyGetSetDef model_getset[] = {
    {"n_instruments", (getter)get_n_instruments, NULL, "K", NULL},
    {"n_underlyings", (getter)get_n_underlyings, NULL, "U", NULL},
    {"n_grid", (getter)get_n_grid, NULL, "G, grid rows", NULL},
    {"n_tail", (getter)get_n_tail, NULL, "T, extended moves", NULL},
    {"n_hist", (getter)get_n_hist, NULL, "H, historical scenarios", NULL},
    {"n_worst", (getter)get_n_worst, NULL, "m, the number of scenarios averaged by ES", NULL},
    {"es_level", (getter)get_es_level, NULL, "ES confidence level", NULL},
    {"mm_factor", (getter)get_mm_factor, NULL, "MM / IM", NULL},
    {NULL},
};

static PyMethodDef model_methods[] = {
    {"compute", (PyCFunction)(void (*)(void))model_compute_checked, METH_VARARGS | METH_KEYWORDS,
     "compute(indptr, instrument, size, isolated, n_threads=2) -> dict: margin of every account"},
    {"what_if", (PyCFunction)(void (*)(void))model_what_if_checked, METH_FASTCALL | METH_KEYWORDS,
     "what_if(instrument, size, isolated, delta_instrument, delta_size) -> dict: one account after trades"},
    {"explain", (PyCFunction)(void (*)(void))model_explain_checked, METH_VARARGS | METH_KEYWORDS,
     "explain(instrument, size, isolated) -> dict: one account's margin and its contributions"},
    {NULL},
};

static PyType_Slot model_slots[] = {
    {Py_tp_doc, "MarginModel(risk, underlying, n_grid, tail_weights, es_level, unit_notional, mark_value, "
                "half_spread, depth, bracket_floor, bracket_rate, mm_factor)\n\n"
                "Margin model for one risk-parameter version (see marginflow.core.reference.MarginModel)."},
    {Py_tp_init, model_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, model_dealloc},
    {Py_tp_methods, model_methods},
    {Py_tp_getset, model_getset},
    {0, NULL},
};

static PyType_Spec model_spec = {
    .name = "marginflow.core._ccore.MarginModel",
    .basicsize = sizeof(Model),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = model_slots,
};

/* ------------------------------------------------------------------ valuation */

/* Equity, requirements and health states of every account at current marks: the twin's
 * reference.valuate, formulas in its docstring. One pass per account over its positions
 * (P&L, cross P&L, freshness, oldest mark, isolated sums) and its balance row, a second
 * over its isolated positions (their states need the account's freshness). Threads take
 * chunks of about VAL_CHUNK positions + accounts from a shared counter. */
#define VAL_CHUNK 16384
#define NEVER_MS INT64_MAX
#define CENT_TOLERANCE 1e-9 /* shared.money: a hundred-millionth of a cent counts as on the boundary */

enum { STATE_HEALTHY = 1 }; /* then MARGIN_CALL 2, LIQUIDATION 3, BANKRUPT 4 */

/* floor / ceil, exact, inline (the baseline x86-64 floor() is a libm call): below 2^52 the
 * truncation to int64 is exact, at or above it every double is already an integer (and
 * NaN / inf come back unchanged, as from floor()). Only -0.0 differs (gives +0.0): the
 * cents are only compared. */
static inline double floor_exact(double x)
{
    if (!(fabs(x) < 4503599627370496.0)) return x;
    double t = (double)(int64_t)x;
    return t > x ? t - 1.0 : t;
}

static inline double ceil_exact(double x)
{
    if (!(fabs(x) < 4503599627370496.0)) return x;
    double t = (double)(int64_t)x;
    return t < x ? t + 1.0 : t;
}

/* health.classify on whole cents in the venue's favour (equity down, requirements up):
 * HEALTHY 1 if E >= I, else MARGIN_CALL 2 unless fresh and E < M: LIQUIDATION 3, or
 * BANKRUPT 4 if also E < 0. Branch-free (the states of a book are mixed); the cents stay
 * doubles, as in the twin (NaN compares false: HEALTHY, like the twin). */
static inline int8_t classify_cents(double equity, double im, double mm, int fresh)
{
    double e = floor_exact(equity * 100.0 + CENT_TOLERANCE);
    double i = ceil_exact(im * 100.0 - CENT_TOLERANCE);
    double m = ceil_exact(mm * 100.0 - CENT_TOLERANCE);
    int below = e < i, liq = below & (e < m) & (fresh != 0), bankrupt = liq & (e < 0.0);
    return (int8_t)(STATE_HEALTHY + below + liq + bankrupt);
}

/* numpy's pairwise summation (np.add.reduce over a contiguous row), bit for bit: the twin's
 * collateral is (balances * unit_value).sum(axis=1). */
static double pairwise_sum(const double *a, Py_ssize_t n)
{
    if (n < 8) {
        double r = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

typedef struct {
    Py_ssize_t N, K, A, nchunks;
    Py_ssize_t lo, hi;           /* the accounts computed: [lo, hi) */
    const int64_t *indptr;
    const int32_t *inst;
    const double *size, *entry, *icoll, *iim, *bal, *cim;
    const uint8_t *iso;
    double mm;
    const double *mark, *cs, *uv;
    const int64_t *mt, *at;
    const uint8_t *fresh, *afresh;
    Py_ssize_t next;             /* next chunk (atomic) */
    Py_ssize_t max_pos;          /* positions of the largest account */
    double *prod[MAX_THREADS];   /* per thread: one balance row times unit_value */
    int32_t *isol[MAX_THREADS];  /* per thread: the account's held isolated positions */
    int bad[MAX_THREADS];        /* per thread: a bad input was met (instrument index, non-finite) */
    /* outputs */
    double *collateral, *cross_pnl, *cross_equity, *cross_mm, *equity, *im, *mm_out, *pnl, *iso_eq, *iso_mm;
    int8_t *cross_state, *state, *iso_state;
    uint8_t *acc_fresh;
    int64_t *oldest;
} ValCtx;

/* First account of chunk ch of [c->lo, c->hi): the first i with indptr[i] + i >= indptr[lo] + lo +
 * ch * VAL_CHUNK (positions and accounts both cost: a run of empty accounts is split too). */
static Py_ssize_t val_bound(const ValCtx *c, Py_ssize_t ch)
{
    if (ch >= c->nchunks) return c->hi;
    int64_t target = c->indptr[c->lo] + (int64_t)c->lo + (int64_t)ch * VAL_CHUNK;
    Py_ssize_t lo = c->lo, hi = c->hi;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (c->indptr[mid] + mid < target) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Accounts [i0, i1); returns 1 if a bad input was met (results are then discarded).
 * Branch-light: held / isolated positions are mixed at random in real books. */
static int val_accounts(const ValCtx *c, double *restrict prod, int32_t *restrict isol, Py_ssize_t i0,
                        Py_ssize_t i1)
{
    const Py_ssize_t K = c->K, A = c->A;
    const double mmf = c->mm;
    const int64_t *restrict indptr = c->indptr;
    const int32_t *restrict inst = c->inst;
    const double *restrict size = c->size, *restrict entry = c->entry, *restrict icoll = c->icoll,
                 *restrict iim = c->iim, *restrict mark = c->mark, *restrict cs = c->cs, *restrict uv = c->uv;
    const uint8_t *restrict isof = c->iso, *restrict freshf = c->fresh, *restrict afresh = c->afresh;
    const int64_t *restrict mt = c->mt, *restrict at = c->at;
    double *restrict o_pnl = c->pnl, *restrict o_ieq = c->iso_eq, *restrict o_imm = c->iso_mm;
    int8_t *restrict o_ist = c->iso_state;
    int bad = 0;
    for (Py_ssize_t i = i0; i < i1; i++) {
        const Py_ssize_t p0 = indptr[i], p1 = indptr[i + 1];
        double cross_pnl = 0.0, iso_eq = 0.0, iso_im = 0.0;
        /* x - x is 0 for a finite x, NaN otherwise: one test per account covers every input */
        double chk = 0.0;
        int stale = 0, n_iso = 0;
        int64_t oldest = NEVER_MS;
        for (Py_ssize_t j = p0; j < p1; j++) {
            int32_t k = inst[j];
            if ((uint32_t)k >= (uint32_t)K) { /* negative too */
                bad = 1;
                k = 0;
            }
            const double q = size[j], e = entry[j], ic = icoll[j], ii = iim[j];
            chk += ((q - q) + (e - e)) + ((ic - ic) + (ii - ii));
            const double pnl = q * cs[k] * (mark[k] - e);
            const int held = q != 0.0, iso = isof[j] != 0, iso_held = iso & held;
            stale |= held & !freshf[k];
            const int64_t t = held ? mt[k] : NEVER_MS;
            oldest = t < oldest ? t : oldest;
            const double eq_j = iso_held ? ic + pnl : 0.0, im_j = iso_held ? ii : 0.0;
            o_pnl[j] = pnl;
            o_ieq[j] = eq_j;
            o_imm[j] = mmf * im_j;
            o_ist[j] = 0;
            isol[n_iso] = (int32_t)(j - p0);
            n_iso += iso_held;
            /* the same additions, in position order, as the twin's bincount (zeros included) */
            cross_pnl += iso ? 0.0 : pnl;
            iso_eq += eq_j;
            iso_im += im_j;
        }
        const double *restrict b = c->bal + i * A;
        for (Py_ssize_t a = 0; a < A; a++) {
            const double x = b[a];
            const int used = x != 0.0;
            chk += x - x;
            prod[a] = x * uv[a];
            stale |= used & !afresh[a];
            const int64_t t = used ? at[a] : NEVER_MS;
            oldest = t < oldest ? t : oldest;
        }
        const double cim = c->cim[i];
        chk += cim - cim;
        bad |= chk != 0.0;
        const int fresh = !stale;
        const double collateral = pairwise_sum(prod, A);
        const double cross_equity = collateral + cross_pnl, cross_mm = mmf * cim;
        int8_t st = classify_cents(cross_equity, cim, cross_mm, fresh);
        c->collateral[i] = collateral;
        c->cross_pnl[i] = cross_pnl;
        c->cross_equity[i] = cross_equity;
        c->cross_mm[i] = cross_mm;
        c->cross_state[i] = st;
        /* isolated states need the account's freshness: a second look at those positions */
        for (int n = 0; n < n_iso; n++) {
            const Py_ssize_t j = p0 + isol[n];
            const int8_t s = classify_cents(o_ieq[j], iim[j], o_imm[j], fresh);
            o_ist[j] = s;
            st = s > st ? s : st;
        }
        const double im = cim + iso_im;
        c->state[i] = st;
        c->acc_fresh[i] = (uint8_t)fresh;
        c->oldest[i] = oldest == NEVER_MS ? 0 : oldest;
        c->equity[i] = cross_equity + iso_eq;
        c->im[i] = im;
        c->mm_out[i] = mmf * im;
    }
    return bad;
}

static void val_work(void *p, int tid, int nthreads)
{
    ValCtx *c = (ValCtx *)p;
    int bad = 0;
    for (;;) {
        Py_ssize_t ch = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED);
        if (ch >= c->nchunks) break;
        bad |= val_accounts(c, c->prod[tid], c->isol[tid], val_bound(c, ch), val_bound(c, ch + 1));
    }
    c->bad[tid] = bad;
}

/* Values of the inputs in argument order (the twin's order): raises the first bad element of
 * the first bad argument; 0 if every value is good. Run with the GIL, after the kernel saw a
 * fault (or before it, when a small argument is bad). */
static int val_check_values(const ValCtx *c, Py_ssize_t nnz)
{
    if (check_range_i32(c->inst, nnz, c->K, "instrument") < 0) return -1;
    if (check_values(c->size, nnz, CHK_FINITE, "size") < 0) return -1;
    if (check_values(c->entry, nnz, CHK_FINITE, "entry") < 0) return -1;
    if (check_values(c->icoll, nnz, CHK_FINITE, "isolated_collateral") < 0) return -1;
    if (check_values(c->iim, nnz, CHK_FINITE, "isolated_im") < 0) return -1;
    for (Py_ssize_t i = 0; i < c->N * c->A; i++)
        if (!isfinite(c->bal[i])) return bad_value_2d("balances", i / c->A, i % c->A, "finite");
    if (check_values(c->cim, c->N, CHK_FINITE, "cross_im") < 0) return -1;
    if (!(c->mm > 0.0 && c->mm <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "mm_factor must be in (0, 1]");
        return -1;
    }
    if (check_values(c->mark, c->K, CHK_FINITE, "mark") < 0) return -1;
    if (check_values(c->cs, c->K, CHK_FINITE, "contract_size") < 0) return -1;
    if (check_values(c->uv, c->A, CHK_FINITE, "unit_value") < 0) return -1;
    return 0;
}

static int val_small_args_ok(const ValCtx *c)
{
    if (!(c->mm > 0.0 && c->mm <= 1.0)) return 0;
    for (Py_ssize_t k = 0; k < c->K; k++)
        if (!isfinite(c->mark[k]) || !isfinite(c->cs[k])) return 0;
    for (Py_ssize_t a = 0; a < c->A; a++)
        if (!isfinite(c->uv[a])) return 0;
    return 1;
}

#define VAL_NIN 17
#define VAL_NOUT 15

static PyObject *py_valuate(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"indptr", "instrument", "size", "entry", "isolated", "isolated_collateral",
                             "isolated_im", "balances", "cross_im", "mm_factor", "mark", "contract_size",
                             "mark_time_ms", "fresh", "unit_value", "asset_fresh", "asset_time_ms", "n_threads",
                             "rows", "out", NULL};
    /* outputs: name, dtype, per position (else per account) */
    static const char *out_keys[VAL_NOUT] = {"collateral", "cross_pnl", "cross_equity", "cross_mm", "cross_state",
                                             "equity", "im", "mm", "state", "fresh", "marks_time_ms", "pnl",
                                             "iso_equity", "iso_mm", "iso_state"};
    static const int out_types[VAL_NOUT] = {NPY_FLOAT64, NPY_FLOAT64, NPY_FLOAT64, NPY_FLOAT64, NPY_INT8,
                                            NPY_FLOAT64, NPY_FLOAT64, NPY_FLOAT64, NPY_INT8,    NPY_BOOL,
                                            NPY_INT64,   NPY_FLOAT64, NPY_FLOAT64, NPY_FLOAT64, NPY_INT8};
    PyObject *o[VAL_NIN], *onth = NULL, *orows = NULL, *oout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOOOOOOOO|$OOO:valuate", kwlist, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13],
                                     &o[14], &o[15], &o[16], &onth, &orows, &oout))
        return NULL;
    if (orows == Py_None) orows = NULL;
    if (oout == Py_None) oout = NULL;
    /* a[9] (mm_factor) stays NULL */
    PyArrayObject *a[VAL_NIN] = {NULL}, *outs[VAL_NOUT] = {NULL};
    PyObject *ret = NULL;
    ValCtx *c = NULL;
    int nth = 1;
    double mm;
    if (!(a[0] = get_array(o[0], "indptr", NPY_INT64, 1))) goto done;
    if (PyArray_DIM(a[0], 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "indptr must have at least 1 element");
        goto done;
    }
    npy_intp N = PyArray_DIM(a[0], 0) - 1;
    if (!(a[1] = get_array(o[1], "instrument", NPY_INT32, 1))) goto done;
    npy_intp nnz = PyArray_DIM(a[1], 0);
    {
        static const char *pos_names[5] = {"size", "entry", "isolated", "isolated_collateral", "isolated_im"};
        for (int i = 2; i <= 6; i++) {
            const char *name = pos_names[i - 2];
            a[i] = i == 4 ? get_flags(o[i], name) : get_array(o[i], name, NPY_FLOAT64, 1);
            if (!a[i] || check_len(a[i], name, nnz) < 0) goto done;
        }
    }
    if (!(a[7] = get_array(o[7], "balances", NPY_FLOAT64, 2))) goto done;
    npy_intp A = PyArray_DIM(a[7], 1);
    {
        npy_intp want[2] = {N, A};
        if (check_shape(a[7], "balances", 2, want) < 0) goto done;
    }
    if (!(a[8] = get_array(o[8], "cross_im", NPY_FLOAT64, 1)) || check_len(a[8], "cross_im", N) < 0) goto done;
    if (get_real(o[9], "mm_factor", &mm) < 0) goto done;
    if (!(a[10] = get_array(o[10], "mark", NPY_FLOAT64, 1))) goto done;
    npy_intp K = PyArray_DIM(a[10], 0);
    if (!(a[11] = get_array(o[11], "contract_size", NPY_FLOAT64, 1)) || check_len(a[11], "contract_size", K) < 0)
        goto done;
    if (!(a[12] = get_array(o[12], "mark_time_ms", NPY_INT64, 1)) || check_len(a[12], "mark_time_ms", K) < 0)
        goto done;
    if (!(a[13] = get_flags(o[13], "fresh")) || check_len(a[13], "fresh", K) < 0) goto done;
    if (!(a[14] = get_array(o[14], "unit_value", NPY_FLOAT64, 1)) || check_len(a[14], "unit_value", A) < 0)
        goto done;
    if (!(a[15] = get_flags(o[15], "asset_fresh")) || check_len(a[15], "asset_fresh", A) < 0) goto done;
    if (!(a[16] = get_array(o[16], "asset_time_ms", NPY_INT64, 1)) || check_len(a[16], "asset_time_ms", A) < 0)
        goto done;
    if (get_threads(onth, &nth) < 0) goto done;
    nth = onth ? nth : 1;
    /* rows (lo, hi): only those accounts, written into out (whole-book arrays); the rest of out untouched */
    Py_ssize_t lo = 0, hi = N;
    if (orows) {
        if (!oout) {
            PyErr_SetString(PyExc_ValueError, "rows needs out (the whole-book arrays the rows are written into)");
            goto done;
        }
        if (!PyTuple_Check(orows) || PyTuple_GET_SIZE(orows) != 2) {
            PyErr_SetString(PyExc_TypeError, "rows must be a tuple (lo, hi)");
            goto done;
        }
        lo = PyLong_AsSsize_t(PyTuple_GET_ITEM(orows, 0));
        if (lo == -1 && PyErr_Occurred()) goto done;
        hi = PyLong_AsSsize_t(PyTuple_GET_ITEM(orows, 1));
        if (hi == -1 && PyErr_Occurred()) goto done;
        if (lo < 0 || hi < lo || hi > N) {
            PyErr_Format(PyExc_ValueError, "rows (%zd, %zd) must satisfy 0 <= lo <= hi <= %zd", lo, hi, (Py_ssize_t)N);
            goto done;
        }
    }
    const int64_t *ip = PyArray_DATA(a[0]);
    if (ip[0] != 0) {
        PyErr_SetString(PyExc_ValueError, "indptr[0] must be 0");
        goto done;
    }
    if (ip[lo] < 0 || ip[hi] > nnz) {  /* (with the order checked below: every position read is in range) */
        PyErr_Format(PyExc_ValueError, "indptr[%zd:%zd] points outside the %zd positions", lo, hi + 1, (Py_ssize_t)nnz);
        goto done;
    }
    Py_ssize_t max_pos = 0;
    for (npy_intp i = lo + 1; i <= hi; i++) {
        if (ip[i] < ip[i - 1]) {
            PyErr_Format(PyExc_ValueError, "indptr must be non-decreasing: indptr[%zd] < indptr[%zd]",
                         (Py_ssize_t)i, (Py_ssize_t)(i - 1));
            goto done;
        }
        if (ip[i] - ip[i - 1] > max_pos) max_pos = (Py_ssize_t)(ip[i] - ip[i - 1]);
    }
    if (ip[N] != nnz) {
        PyErr_Format(PyExc_ValueError, "indptr[-1] = %lld must equal the number of positions %zd",
                     (long long)ip[N], (Py_ssize_t)nnz);
        goto done;
    }
    if (!(c = PyMem_Calloc(1, sizeof *c))) {
        PyErr_NoMemory();
        goto done;
    }
    *c = (ValCtx){.N = N, .K = K, .A = A, .indptr = ip, .inst = PyArray_DATA(a[1]), .size = PyArray_DATA(a[2]),
                  .entry = PyArray_DATA(a[3]), .iso = PyArray_DATA(a[4]), .icoll = PyArray_DATA(a[5]),
                  .iim = PyArray_DATA(a[6]), .bal = PyArray_DATA(a[7]), .cim = PyArray_DATA(a[8]), .mm = mm,
                  .mark = PyArray_DATA(a[10]), .cs = PyArray_DATA(a[11]), .mt = PyArray_DATA(a[12]),
                  .fresh = PyArray_DATA(a[13]), .uv = PyArray_DATA(a[14]), .afresh = PyArray_DATA(a[15]),
                  .at = PyArray_DATA(a[16]), .lo = lo, .hi = hi};
    /* (no instruments but positions: every index is bad; the kernel never reads mark[0] then) */
    if (!val_small_args_ok(c) || (K == 0 && nnz > 0)) {
        if (val_check_values(c, nnz) == 0)
            PyErr_SetString(PyExc_SystemError, "valuate: a bad input was seen but not found again");
        goto done;
    }
    if (oout && !PyDict_Check(oout)) {
        PyErr_SetString(PyExc_TypeError, "out must be a dict of arrays (as valuate returns)");
        goto done;
    }
    for (int i = 0; i < VAL_NOUT; i++) {
        npy_intp len = i >= 11 ? nnz : N;
        if (oout) {   /* the caller's arrays: a dict with every key, each writeable, contiguous, of its dtype */
            PyObject *v = PyDict_GetItemString(oout, out_keys[i]);
            if (!v || !PyArray_Check(v) || PyArray_TYPE((PyArrayObject *)v) != out_types[i] ||
                PyArray_NDIM((PyArrayObject *)v) != 1 || PyArray_DIM((PyArrayObject *)v, 0) != len ||
                !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)v) || !PyArray_ISWRITEABLE((PyArrayObject *)v) ||
                !PyArray_ISALIGNED((PyArrayObject *)v) || !PyArray_ISNOTSWAPPED((PyArrayObject *)v)) {
                PyErr_Format(PyExc_ValueError, "out[%s] must be a writeable contiguous %s array of length %zd",
                             out_keys[i], type_name_of(out_types[i]), (Py_ssize_t)len);
                goto done;
            }
            Py_INCREF(v);
            outs[i] = (PyArrayObject *)v;
        /* no zeroing: the kernel writes every element */
        } else if (!(outs[i] = (PyArrayObject *)PyArray_EMPTY(1, &len, out_types[i], 0))) {
            goto done;
        }
    }
    double **fo[10] = {&c->collateral, &c->cross_pnl, &c->cross_equity, &c->cross_mm, &c->equity,
                       &c->im,         &c->mm_out,    &c->pnl,          &c->iso_eq,   &c->iso_mm};
    static const int fidx[10] = {0, 1, 2, 3, 5, 6, 7, 11, 12, 13};
    for (int i = 0; i < 10; i++) *fo[i] = PyArray_DATA(outs[fidx[i]]);
    c->cross_state = PyArray_DATA(outs[4]);
    c->state = PyArray_DATA(outs[8]);
    c->acc_fresh = PyArray_DATA(outs[9]);
    c->oldest = PyArray_DATA(outs[10]);
    c->iso_state = PyArray_DATA(outs[14]);
    c->nchunks = hi > lo ? (Py_ssize_t)((ip[hi] - ip[lo] + (hi - lo) + VAL_CHUNK - 1) / VAL_CHUNK) : 0;
    /* one chunk per thread at least; starting a thread costs ~20-50 us */
    if (nth > c->nchunks) nth = c->nchunks > 0 ? (int)c->nchunks : 1;
    for (int t = 0; t < nth; t++) {
        c->prod[t] = malloc((size_t)(A + 1) * sizeof(double));
        c->isol[t] = malloc((size_t)(max_pos + 1) * sizeof(int32_t));
        if (!c->prod[t] || !c->isol[t]) {
            for (int s = 0; s <= t; s++) {
                free(c->prod[s]);
                free(c->isol[s]);
            }
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    run_parallel(val_work, c, nth);
    Py_END_ALLOW_THREADS
    int bad = 0;
    for (int t = 0; t < nth; t++) {
        free(c->prod[t]);
        free(c->isol[t]);
        bad |= c->bad[t];
    }
    if (bad) {
        if (val_check_values(c, nnz) == 0)
            PyErr_SetString(PyExc_SystemError, "valuate: a bad input was seen but not found again");
        goto done;
    }
    if (oout) {
        Py_INCREF(oout);
        ret = oout;
    } else {
        PyObject *d = PyDict_New();
        if (!d) goto done;
        for (int i = 0; i < VAL_NOUT; i++)
            if (PyDict_SetItemString(d, out_keys[i], (PyObject *)outs[i]) < 0) {
                Py_DECREF(d);
                goto done;
            }
        ret = d;
    }
done:
    PyMem_Free(c);
    for (int i = 0; i < VAL_NIN; i++) Py_XDECREF(a[i]);
    for (int i = 0; i < VAL_NOUT; i++) Py_XDECREF(outs[i]);
    return ret;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef module_methods[] = {
    {"black76_price", (PyCFunction)(void (*)(void))py_black76_price, METH_VARARGS | METH_KEYWORDS,
     "black76_price(kind, forward, strike, expiry_years, implied_vol) -> float64[K]"},
    {"depth_distance", (PyCFunction)(void (*)(void))py_depth_distance, METH_VARARGS | METH_KEYWORDS,
     "depth_distance(instrument, size, points_share, points_bps, last_contracts, last_bps, floor_bps, "
     "uncovered_penalty) -> float64[n], bps"},
    {"risk_arrays", (PyCFunction)(void (*)(void))py_risk_arrays, METH_VARARGS | METH_KEYWORDS,
     "risk_arrays(kind, underlying, forward, strike, expiry_years, implied_vol, multiplier, price_shock, "
     "vol_shock, *, horizon_years=0.0, vol_shock_relative=False, n_threads=2) -> float64[K, S]"},
    {"valuate", (PyCFunction)(void (*)(void))py_valuate, METH_VARARGS | METH_KEYWORDS,
     "valuate(indptr, instrument, size, entry, isolated, isolated_collateral, isolated_im, balances, cross_im, "
     "mm_factor, mark, contract_size, mark_time_ms, fresh, unit_value, asset_fresh, asset_time_ms, *, "
     "n_threads=1, rows=None, out=None) -> dict: equity, requirements and health states at current marks "
     "(see marginflow.core.reference.valuate)"},
    {NULL},
};

static int module_exec(PyObject *m)
{
    if (_import_array() < 0) return -1;
    ModState *st = PyModule_GetState(m);
    st->MarginModelType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &model_spec, NULL);
    if (!st->MarginModelType) return -1;
    if (PyModule_AddType(m, st->MarginModelType) < 0) return -1;
    if (PyModule_AddIntConstant(m, "KIND_PERP", KIND_PERP) < 0 ||
        PyModule_AddIntConstant(m, "KIND_FUTURE", KIND_FUTURE) < 0 ||
        PyModule_AddIntConstant(m, "KIND_CALL", KIND_CALL) < 0 ||
        PyModule_AddIntConstant(m, "KIND_PUT", KIND_PUT) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    ModState *st = PyModule_GetState(m);
    if (st) Py_VISIT(st->MarginModelType);
    return 0;
}

static int module_clear(PyObject *m)
{
    ModState *st = PyModule_GetState(m);
    if (st) Py_CLEAR(st->MarginModelType);
    return 0;
}

static void module_free(void *m) { module_clear((PyObject *)m); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "marginflow.core._ccore",
    .m_doc = "Margin core in C: risk arrays (Black-76), grid/ES/tiered/liquidity margin, what-if, explain.",
    .m_size = sizeof(ModState),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__ccore(void) { return PyModuleDef_Init(&module_def); }
