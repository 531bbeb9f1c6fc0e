/* herald._shape: the number check's prefilter at memory speed (see codec._may_be_safe).
 *
 * One pass over a request body, classifying each byte as codec._SHAPE does: D (a digit
 * or a sign), E (e or E), a dot, or anything else. It answers
 *
 *   0  no run of 16 or more D bytes that does not follow a dot, and no E followed by
 *      three D bytes: no number in the body can be one codec.number_problem refuses;
 *   1  such a run (an integer part of 16 digits or more may be there): the exact check;
 *   2  only E followed by three D bytes (an exponent of three digits may be there).
 *
 * It is exactly codec._shape_verdict (the Python version, used where this module was
 * not built), which tests/unit/test_numbers.py holds it to on random bodies. Pure
 * Python needed about 15 instructions per byte for this (bytes.translate and two
 * searches): as much as msgspec's whole decode of the body. Here, with SSE2, a block of
 * 16 bytes costs a few instructions; elsewhere a plain loop does the same job.
 *
 * Optional: setup.py builds it where a C compiler is found, and Herald runs the same
 * rule without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_DISPATCH 1
#endif

static inline int is_d(unsigned char c) {
    return (unsigned char)(c - '0') <= 9 || c == '+' || c == '-';
}

static inline int is_e(unsigned char c) { return c == 'e' || c == 'E'; }

/* The plain version, for any machine (and for the tail of the SSE2 loop). State:
 * ``run``: D bytes in a row so far; ``dotted``: the byte before that run is a dot;
 * ``pending``: D bytes still needed after an E for "e000" (0: none pending). */
typedef struct {
    Py_ssize_t run;
    int dotted;
    int prev_dot;   /* the previous byte is a dot */
    int pending;    /* after an E: D bytes still to see (3, 2, 1), else 0 */
    int exponent;   /* an E followed by three D bytes was seen */
} state_t;

/* Returns 1 once a long integer part is found. */
static inline int step(state_t *s, unsigned char c) {
    if (is_d(c)) {
        if (s->run == 0)
            s->dotted = s->prev_dot;
        s->run++;
        if (s->run >= 16 && !s->dotted)
            return 1;
        if (s->pending) {
            s->pending--;
            if (s->pending == 0)
                s->exponent = 1;
        }
        s->prev_dot = 0;
        return 0;
    }
    s->run = 0;
    s->pending = is_e(c) ? 3 : 0;
    s->prev_dot = (c == '.');
    return 0;
}

static int scan_plain(state_t *s, const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (step(s, p[i]))
            return 1;
    return 0;
}

#if defined(__SSE2__)
/* Bit k set: byte k of the 16 is D (a digit or a sign); or E. */
static inline uint64_t d_mask(__m128i v) {
    __m128i rel = _mm_sub_epi8(v, _mm_set1_epi8('0'));
    __m128i digit = _mm_cmpeq_epi8(_mm_min_epu8(rel, _mm_set1_epi8(9)), rel);
    __m128i sign = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('+')),
                                _mm_cmpeq_epi8(v, _mm_set1_epi8('-')));
    return (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_or_si128(digit, sign));
}

static inline uint64_t e_mask(__m128i v) {
    return (uint64_t)(unsigned int)_mm_movemask_epi8(
        _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('e')), _mm_cmpeq_epi8(v, _mm_set1_epi8('E'))));
}

/* The D and E masks of 64 bytes, each byte loaded once. */
static inline __attribute__((always_inline)) void masks64(
        const unsigned char *p, uint64_t *d, uint64_t *e) {
    __m128i v0 = _mm_loadu_si128((const __m128i *)p);
    __m128i v1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i v2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i v3 = _mm_loadu_si128((const __m128i *)(p + 48));
    *d = d_mask(v0) | d_mask(v1) << 16 | d_mask(v2) << 32 | d_mask(v3) << 48;
    *e = e_mask(v0) | e_mask(v1) << 16 | e_mask(v2) << 32 | e_mask(v3) << 48;
}

/* An E followed by three D bytes in a chunk (``next``: the D mask after it). */
static inline int exponent_in(uint64_t e, uint64_t d, uint64_t next) {
    return (e & ((d >> 1) | next << 63) & ((d >> 2) | next << 62)
              & ((d >> 3) | next << 61)) != 0;
}

/* 64 bytes at a time, as bit masks (bit k: byte k of the chunk). Runs of 16 D bytes:
 * bit k of R = D & D>>1, then R &= R>>2, R>>4, R>>8, says bytes k…k+15 are all D; a run
 * begins where D is set and the byte before is not D. A run inside the chunk is long
 * if it begins at a set bit of R and the byte before it is not a dot (looked at only
 * then: rare); the run reaching the chunk's end is carried into the next (its length
 * and whether a dot precedes it). An E followed by three D bytes is E & D>>1 & D>>2 &
 * D>>3, with the next chunk's first bits shifted in (so judged one chunk late). Stops at the last whole chunk
 * (``*done``), leaving the state for the plain loop, which does the rest. */
typedef void (*masks_fn)(const unsigned char *, uint64_t *, uint64_t *);

static inline __attribute__((always_inline)) int scan_chunks(
        state_t *s, const unsigned char *p, Py_ssize_t n, Py_ssize_t *done, masks_fn masks) {
    /* The state in locals: stores through ``s`` could alias the bytes (unsigned char
     * may alias anything), which would keep the compiler from holding it in registers. */
    Py_ssize_t run = s->run;
    int dotted = s->dotted, prev_dot = s->prev_dot, exponent = s->exponent;
    Py_ssize_t i = 0;
    uint64_t last_d = 0, last_e = 0;  /* the previous chunk's, judged with this one's */
    for (; i + 64 <= n; i += 64) {
        const unsigned char *c = p + i;
        uint64_t d, e;
        masks(c, &d, &e);
        exponent |= exponent_in(last_e, last_d, d);
        last_d = d;
        last_e = e;
        uint64_t inv = ~d;
        if (inv == 0) {  /* 64 D bytes */
            if (run == 0)
                dotted = prev_dot;
            run += 64;
            if (!dotted)
                return 1;
            prev_dot = 0;
            continue;
        }
        int trailing = __builtin_ctzll(inv);  /* D bytes at the chunk's start */
        if (run > 0 && run + trailing >= 16 && !dotted)
            return 1;
        uint64_t r = d & d >> 1;
        r &= r >> 2;
        r &= r >> 4;
        r &= r >> 8;
        if (r) {
            /* Runs beginning in the chunk (at bit 0 only if none was carried). */
            uint64_t begins = d & ~(d << 1) & r;
            if (run > 0)
                begins &= ~(uint64_t)1;
            while (begins) {
                int k = __builtin_ctzll(begins);
                if (!(k == 0 ? prev_dot : c[k - 1] == '.'))
                    return 1;
                begins &= begins - 1;
            }
        }
        int lead = __builtin_clzll(inv);  /* D bytes at the chunk's end */
        run = lead;
        if (lead)
            dotted = c[63 - lead] == '.';
        prev_dot = c[63] == '.';
    }
    /* The last chunk's E bytes, with the (up to) three bytes after it. */
    uint64_t after = 0;
    for (Py_ssize_t k = 0; k < 3 && i + k < n; k++)
        after |= (uint64_t)is_d(p[i + k]) << k;
    exponent |= exponent_in(last_e, last_d, after);
    s->run = run;
    s->dotted = dotted;
    s->prev_dot = prev_dot;
    s->exponent = exponent;
    s->pending = 0;
    *done = i;
    return 0;
}
static int scan_sse2(state_t *s, const unsigned char *p, Py_ssize_t n, Py_ssize_t *done) {
    return scan_chunks(s, p, n, done, masks64);
}

#if defined(HAVE_AVX2_DISPATCH)
/* The same with AVX2, where the processor has it (checked once, at import): 32 bytes
 * per compare, half the instructions of the masks. */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void masks64_avx2(
        const unsigned char *p, uint64_t *d, uint64_t *e) {
    uint64_t dm[2], em[2];
    for (int half = 0; half < 2; half++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(p + 32 * half));
        __m256i rel = _mm256_sub_epi8(v, _mm256_set1_epi8('0'));
        __m256i digit = _mm256_cmpeq_epi8(_mm256_min_epu8(rel, _mm256_set1_epi8(9)), rel);
        __m256i sign = _mm256_or_si256(_mm256_cmpeq_epi8(v, _mm256_set1_epi8('+')),
                                       _mm256_cmpeq_epi8(v, _mm256_set1_epi8('-')));
        dm[half] = (uint32_t)_mm256_movemask_epi8(_mm256_or_si256(digit, sign));
        em[half] = (uint32_t)_mm256_movemask_epi8(
            _mm256_or_si256(_mm256_cmpeq_epi8(v, _mm256_set1_epi8('e')),
                            _mm256_cmpeq_epi8(v, _mm256_set1_epi8('E'))));
    }
    *d = dm[0] | dm[1] << 32;
    *e = em[0] | em[1] << 32;
}

__attribute__((target("avx2")))
static int scan_avx2(state_t *s, const unsigned char *p, Py_ssize_t n, Py_ssize_t *done) {
    return scan_chunks(s, p, n, done, masks64_avx2);
}
#endif
#endif

static int use_avx2 = 0;

static PyObject *verdict(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    state_t s = {0, 0, 0, 0, 0};
    int long_run = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t done = 0;
#if defined(HAVE_AVX2_DISPATCH)
    if (use_avx2)
        long_run = scan_avx2(&s, p, n, &done);
    else
#endif
#if defined(__SSE2__)
    long_run = scan_sse2(&s, p, n, &done);
#endif
    if (!long_run)
        long_run = scan_plain(&s, p + done, n - done);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromLong(long_run ? 1 : s.exponent ? 2 : 0);
}

static PyMethodDef methods[] = {
    {"verdict", verdict, METH_O,
     "0: no number can be refused; 1: a long integer part may be there; "
     "2: only a three-digit exponent may be there."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "herald._shape",
    "The number check's prefilter in C (see codec._may_be_safe).", -1, methods,
};

PyMODINIT_FUNC PyInit__shape(void) {
#if defined(HAVE_AVX2_DISPATCH)
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModule_Create(&module);
}
