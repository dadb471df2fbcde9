/*
 * a·P + b·Q on the Ed25519 curve for public inputs: the one step of verifying Guix's
 * ECDSA-on-Ed25519 narinfo signatures that Python cannot do fast (see ed25519_ecdsa.py).
 *
 * Why it exists: libsodium, reached through PyNaCl, offers only a constant-time
 * variable-base multiplication that decodes and validates Q on every call (~90 µs here), and
 * every check of a relayed narinfo needs one. Verification works on public values only (the
 * digest, r, s and the key), so variable-time code is fine, and a key signs many narinfos, so
 * a table of its multiples computed once makes each check a fixed-base multiplication.
 *
 * Method: the curve -x² + y² = 1 + d·x²·y² in extended coordinates (X:Y:Z:T), x = X/Z,
 * y = Y/Z, x·y = T/Z, with the complete addition and doubling formulas of Hisil, Wong, Carter
 * and Dawson (2008) for a = -1, so no input point needs a special case. A point's table holds
 * k·256^j·P for j < 32 and 1 <= k <= 8, affine, as (y - x, y + x, 2d·x·y). A scalar below 2^253
 * is written in 64 signed base-16 digits in [-8, 8]; the odd digits of both scalars are added
 * from the tables, the sum is multiplied by 16, then the even digits are added: 128 mixed
 * additions and 4 doublings instead of ~253 doublings.
 *
 * Field elements: five 51-bit limbs. Every operation leaves each limb below 2^51 + 2^14, which
 * keeps the 128-bit products of `fe_mul` and the carries out of them far from overflow.
 *
 * No state is kept between calls: tables are bytes objects owned by the caller.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef struct {
    uint64_t v[5];
} fe;

#define MASK51 ((((uint64_t)1) << 51) - 1)

/* Extended coordinates. */
typedef struct {
    fe X, Y, Z, T;
} point;

/* An affine point prepared for mixed addition: y - x, y + x, 2d·x·y. */
typedef struct {
    fe y_minus_x, y_plus_x, xy2d;
} niels;

#define TABLE_ROWS 32
#define TABLE_COLUMNS 8
#define TABLE_BYTES (TABLE_ROWS * TABLE_COLUMNS * sizeof(niels))

/* 2d, d = -121665/121666 mod p, as limbs. */
static const fe CURVE_2D = {{0x69b9426b2f159, 0x35050762add7a, 0x3cf44c0038052,
                             0x6738cc7407977, 0x2406d9dc56dff}};

static void fe_carry(fe *h)
{
    uint64_t c;
    c = h->v[0] >> 51; h->v[0] &= MASK51; h->v[1] += c;
    c = h->v[1] >> 51; h->v[1] &= MASK51; h->v[2] += c;
    c = h->v[2] >> 51; h->v[2] &= MASK51; h->v[3] += c;
    c = h->v[3] >> 51; h->v[3] &= MASK51; h->v[4] += c;
    c = h->v[4] >> 51; h->v[4] &= MASK51; h->v[0] += 19 * c;
}

static void fe_add(fe *h, const fe *f, const fe *g)
{
    for (int i = 0; i < 5; i++)
        h->v[i] = f->v[i] + g->v[i];
    fe_carry(h);
}

/* f - g, computed as f + 2p - g so no limb goes below zero. */
static void fe_sub(fe *h, const fe *f, const fe *g)
{
    h->v[0] = f->v[0] + 0xfffffffffffdaULL - g->v[0];
    for (int i = 1; i < 5; i++)
        h->v[i] = f->v[i] + 0xffffffffffffeULL - g->v[i];
    fe_carry(h);
}

static void fe_mul(fe *h, const fe *f, const fe *g)
{
    uint64_t f0 = f->v[0], f1 = f->v[1], f2 = f->v[2], f3 = f->v[3], f4 = f->v[4];
    uint64_t g0 = g->v[0], g1 = g->v[1], g2 = g->v[2], g3 = g->v[3], g4 = g->v[4];
    uint64_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    u128 t0 = (u128)f0 * g0 + (u128)f1 * g4_19 + (u128)f2 * g3_19 + (u128)f3 * g2_19 +
              (u128)f4 * g1_19;
    u128 t1 = (u128)f0 * g1 + (u128)f1 * g0 + (u128)f2 * g4_19 + (u128)f3 * g3_19 +
              (u128)f4 * g2_19;
    u128 t2 = (u128)f0 * g2 + (u128)f1 * g1 + (u128)f2 * g0 + (u128)f3 * g4_19 +
              (u128)f4 * g3_19;
    u128 t3 = (u128)f0 * g3 + (u128)f1 * g2 + (u128)f2 * g1 + (u128)f3 * g0 +
              (u128)f4 * g4_19;
    u128 t4 = (u128)f0 * g4 + (u128)f1 * g3 + (u128)f2 * g2 + (u128)f3 * g1 +
              (u128)f4 * g0;
    t1 += (uint64_t)(t0 >> 51);
    t2 += (uint64_t)(t1 >> 51);
    t3 += (uint64_t)(t2 >> 51);
    t4 += (uint64_t)(t3 >> 51);
    uint64_t c = (uint64_t)(t4 >> 51);
    h->v[0] = ((uint64_t)t0 & MASK51) + 19 * c;
    h->v[1] = (uint64_t)t1 & MASK51;
    h->v[2] = (uint64_t)t2 & MASK51;
    h->v[3] = (uint64_t)t3 & MASK51;
    h->v[4] = (uint64_t)t4 & MASK51;
    c = h->v[0] >> 51;
    h->v[0] &= MASK51;
    h->v[1] += c;
}

static void fe_sq(fe *h, const fe *f) { fe_mul(h, f, f); }

static void fe_sq_times(fe *h, const fe *f, int times)
{
    fe_sq(h, f);
    for (int i = 1; i < times; i++)
        fe_sq(h, h);
}

/* z^(p-2) = 1/z, by the usual chain of 254 squarings and 11 multiplications. */
static void fe_invert(fe *out, const fe *z)
{
    fe z2, z9, z11, z_5_0, z_10_0, z_20_0, z_50_0, z_100_0, t;
    fe_sq(&z2, z);
    fe_sq_times(&t, &z2, 2);
    fe_mul(&z9, &t, z);
    fe_mul(&z11, &z9, &z2);
    fe_sq(&t, &z11);
    fe_mul(&z_5_0, &t, &z9);
    fe_sq_times(&t, &z_5_0, 5);
    fe_mul(&z_10_0, &t, &z_5_0);
    fe_sq_times(&t, &z_10_0, 10);
    fe_mul(&z_20_0, &t, &z_10_0);
    fe_sq_times(&t, &z_20_0, 20);
    fe_mul(&t, &t, &z_20_0);
    fe_sq_times(&t, &t, 10);
    fe_mul(&z_50_0, &t, &z_10_0);
    fe_sq_times(&t, &z_50_0, 50);
    fe_mul(&z_100_0, &t, &z_50_0);
    fe_sq_times(&t, &z_100_0, 100);
    fe_mul(&t, &t, &z_100_0);
    fe_sq_times(&t, &t, 50);
    fe_mul(&t, &t, &z_50_0);
    fe_sq_times(&t, &t, 5);
    fe_mul(out, &t, &z11);
}

/* A little-endian value below 2^255 (callers pass canonical ones). */
static void fe_from_bytes(fe *h, const unsigned char *s)
{
    uint64_t w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = 0;
        for (int j = 7; j >= 0; j--)
            w[i] = (w[i] << 8) | s[8 * i + j];
    }
    h->v[0] = w[0] & MASK51;
    h->v[1] = ((w[0] >> 51) | (w[1] << 13)) & MASK51;
    h->v[2] = ((w[1] >> 38) | (w[2] << 26)) & MASK51;
    h->v[3] = ((w[2] >> 25) | (w[3] << 39)) & MASK51;
    h->v[4] = (w[3] >> 12) & MASK51;
}

/* The canonical value in [0, p) as 32 little-endian bytes. */
static void fe_to_bytes(unsigned char *s, const fe *f)
{
    fe h = *f;
    fe_carry(&h);
    fe_carry(&h);
    /* Now h < 2^255 + small; subtract p once if h >= p: q is 1 exactly then. */
    uint64_t q = (h.v[0] + 19) >> 51;
    q = (h.v[1] + q) >> 51;
    q = (h.v[2] + q) >> 51;
    q = (h.v[3] + q) >> 51;
    q = (h.v[4] + q) >> 51;
    h.v[0] += 19 * q;
    uint64_t c;
    c = h.v[0] >> 51; h.v[0] &= MASK51; h.v[1] += c;
    c = h.v[1] >> 51; h.v[1] &= MASK51; h.v[2] += c;
    c = h.v[2] >> 51; h.v[2] &= MASK51; h.v[3] += c;
    c = h.v[3] >> 51; h.v[3] &= MASK51; h.v[4] += c;
    h.v[4] &= MASK51;
    uint64_t w[4] = {
        h.v[0] | (h.v[1] << 51),
        (h.v[1] >> 13) | (h.v[2] << 38),
        (h.v[2] >> 26) | (h.v[3] << 25),
        (h.v[3] >> 39) | (h.v[4] << 12),
    };
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++)
            s[8 * i + j] = (unsigned char)(w[i] >> (8 * j));
}

static void point_identity(point *p)
{
    memset(p, 0, sizeof *p);
    p->Y.v[0] = 1;
    p->Z.v[0] = 1;
}

/* dbl-2008-hwcd with a = -1. */
static void point_double(point *r, const point *p)
{
    fe a, b, c, e, g, f, h, t;
    fe_sq(&a, &p->X);
    fe_sq(&b, &p->Y);
    fe_sq(&c, &p->Z);
    fe_add(&c, &c, &c);
    fe_add(&t, &p->X, &p->Y);
    fe_sq(&e, &t);
    fe_sub(&e, &e, &a);
    fe_sub(&e, &e, &b); /* e = 2xy */
    fe_sub(&g, &b, &a); /* g = -a·A + B with a = -1 */
    fe_sub(&f, &g, &c);
    fe_add(&t, &a, &b);
    memset(&h, 0, sizeof h);
    fe_sub(&h, &h, &t); /* h = a·A - B = -(A + B) */
    fe_mul(&r->X, &e, &f);
    fe_mul(&r->Y, &g, &h);
    fe_mul(&r->T, &e, &h);
    fe_mul(&r->Z, &f, &g);
}

/* p + q (or p - q when `negate`) for an affine q in niels form: madd-2008-hwcd-3 with a = -1. */
static void point_add_niels(point *r, const point *p, const niels *q, int negate)
{
    fe a, b, c, d, e, f, g, h, t;
    fe_sub(&t, &p->Y, &p->X);
    fe_mul(&a, &t, negate ? &q->y_plus_x : &q->y_minus_x);
    fe_add(&t, &p->Y, &p->X);
    fe_mul(&b, &t, negate ? &q->y_minus_x : &q->y_plus_x);
    fe_mul(&c, &p->T, &q->xy2d);
    fe_add(&d, &p->Z, &p->Z);
    fe_sub(&e, &b, &a);
    if (negate) {
        fe_add(&f, &d, &c);
        fe_sub(&g, &d, &c);
    } else {
        fe_sub(&f, &d, &c);
        fe_add(&g, &d, &c);
    }
    fe_add(&h, &b, &a);
    fe_mul(&r->X, &e, &f);
    fe_mul(&r->Y, &g, &h);
    fe_mul(&r->T, &e, &h);
    fe_mul(&r->Z, &f, &g);
}

static void niels_from_affine(niels *n, const fe *x, const fe *y)
{
    fe xy;
    fe_sub(&n->y_minus_x, y, x);
    fe_add(&n->y_plus_x, y, x);
    fe_mul(&xy, x, y);
    fe_mul(&n->xy2d, &xy, &CURVE_2D);
}

static void point_to_affine(fe *x, fe *y, const point *p)
{
    fe z_inverse;
    fe_invert(&z_inverse, &p->Z);
    fe_mul(x, &p->X, &z_inverse);
    fe_mul(y, &p->Y, &z_inverse);
}

/* 64 signed digits in [-8, 8] of a little-endian scalar below 2^253. */
static void signed_radix16(signed char digits[64], const unsigned char *scalar)
{
    for (int i = 0; i < 32; i++) {
        digits[2 * i] = scalar[i] & 15;
        digits[2 * i + 1] = (scalar[i] >> 4) & 15;
    }
    int carry = 0;
    for (int i = 0; i < 63; i++) {
        digits[i] += carry;
        carry = (digits[i] + 8) >> 4;
        digits[i] -= carry << 4;
    }
    digits[63] += carry;
}

static void add_digit(point *h, const niels *table, int row, signed char digit)
{
    if (digit == 0)
        return;
    int negate = digit < 0;
    int k = negate ? -digit : digit;
    point_add_niels(h, h, &table[row * TABLE_COLUMNS + (k - 1)], negate);
}

static int read_fe_argument(fe *out, Py_buffer *buffer, const char *what)
{
    if (buffer->len != 32) {
        PyErr_Format(PyExc_ValueError, "%s must be 32 bytes", what);
        return -1;
    }
    const unsigned char *s = buffer->buf;
    if (s[31] & 0x80) {
        PyErr_Format(PyExc_ValueError, "%s must be below 2^255", what);
        return -1;
    }
    fe_from_bytes(out, s);
    return 0;
}

PyDoc_STRVAR(point_table_doc,
"point_table(x, y) -> bytes\n\n"
"The table of k·256^j·P (j < 32, 1 <= k <= 8) that combine_x reads, for the affine point\n"
"P = (x, y) given as canonical 32-byte little-endian field elements. The caller must have\n"
"checked that P is a point of the prime-order subgroup.");

static PyObject *point_table(PyObject *self, PyObject *args)
{
    Py_buffer xb, yb;
    if (!PyArg_ParseTuple(args, "y*y*", &xb, &yb))
        return NULL;
    fe x, y;
    int bad = read_fe_argument(&x, &xb, "x") || read_fe_argument(&y, &yb, "y");
    PyBuffer_Release(&xb);
    PyBuffer_Release(&yb);
    if (bad)
        return NULL;

    PyObject *out = PyBytes_FromStringAndSize(NULL, TABLE_BYTES);
    if (out == NULL)
        return NULL;
    niels *table = (niels *)PyBytes_AS_STRING(out);
    /* base = 256^j·P as an affine point in niels form, and its multiples by addition. */
    niels base;
    niels_from_affine(&base, &x, &y);
    for (int row = 0; row < TABLE_ROWS; row++) {
        point multiple;
        point_identity(&multiple);
        for (int k = 0; k < TABLE_COLUMNS; k++) {
            fe ax, ay;
            point_add_niels(&multiple, &multiple, &base, 0);
            point_to_affine(&ax, &ay, &multiple);
            niels_from_affine(&table[row * TABLE_COLUMNS + k], &ax, &ay);
        }
        /* multiple = 8·base; 256·base is five doublings further. */
        for (int i = 0; i < 5; i++)
            point_double(&multiple, &multiple);
        fe ax, ay;
        point_to_affine(&ax, &ay, &multiple);
        niels_from_affine(&base, &ax, &ay);
    }
    return out;
}

static int read_scalar(Py_buffer *buffer, const char *what)
{
    if (buffer->len != 32) {
        PyErr_Format(PyExc_ValueError, "%s must be 32 bytes", what);
        return -1;
    }
    if (((const unsigned char *)buffer->buf)[31] & 0xe0) {
        PyErr_Format(PyExc_ValueError, "%s must be below 2^253", what);
        return -1;
    }
    return 0;
}

static int read_table(Py_buffer *buffer, const char *what)
{
    if ((size_t)buffer->len != TABLE_BYTES) {
        PyErr_Format(PyExc_ValueError, "%s is not a table made by point_table", what);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(combine_x_doc,
"combine_x(a, p_table, b, q_table) -> bytes\n\n"
"The affine x of a·P + b·Q as a canonical 32-byte little-endian field element, for\n"
"scalars a, b below 2^253 (32 bytes, little-endian) and the tables of P and Q. Variable\n"
"time: for public inputs only.");

static PyObject *combine_x(PyObject *self, PyObject *args)
{
    Py_buffer a, p_table, b, q_table;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &a, &p_table, &b, &q_table))
        return NULL;
    PyObject *result = NULL;
    if (read_scalar(&a, "a") || read_table(&p_table, "p_table") || read_scalar(&b, "b") ||
        read_table(&q_table, "q_table"))
        goto done;

    signed char a_digits[64], b_digits[64];
    signed_radix16(a_digits, a.buf);
    signed_radix16(b_digits, b.buf);
    const niels *pt = p_table.buf, *qt = q_table.buf;
    point h;
    point_identity(&h);
    for (int i = 1; i < 64; i += 2) {
        add_digit(&h, pt, i / 2, a_digits[i]);
        add_digit(&h, qt, i / 2, b_digits[i]);
    }
    for (int i = 0; i < 4; i++)
        point_double(&h, &h);
    for (int i = 0; i < 64; i += 2) {
        add_digit(&h, pt, i / 2, a_digits[i]);
        add_digit(&h, qt, i / 2, b_digits[i]);
    }
    fe x, y;
    point_to_affine(&x, &y, &h);
    unsigned char out[32];
    fe_to_bytes(out, &x);
    result = PyBytes_FromStringAndSize((const char *)out, 32);
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&p_table);
    PyBuffer_Release(&b);
    PyBuffer_Release(&q_table);
    return result;
}

static PyMethodDef methods[] = {
    {"point_table", point_table, METH_VARARGS, point_table_doc},
    {"combine_x", combine_x, METH_VARARGS, combine_x_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "p2pcache.guix._edwards25519",
    "a·P + b·Q on Ed25519 for public inputs, from per-point tables (see the C source).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__edwards25519(void) { return PyModule_Create(&module); }
