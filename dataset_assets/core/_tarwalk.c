/* The hot loop of reading a local shard: walk the tar headers of a buffer and group members into samples.
 *
 * `SampleWalker(view, archive, views, slow, expand, error, tag=None)` iterates `(key, {extension: data})`
 * over the tar in `view` (a C-contiguous memoryview), data being `bytes` copies or, with `views`, memoryview
 * slices of `view`; given a `tag`, it iterates `(tag, key, {extension: data})`. A zstd block member is handed
 * to `expand(name, data)`, data a slice of `view`, and the `(key, sample)` items of the iterator it returns
 * are yielded in its place: no Python frame runs per sample of a plain shard.
 *
 * Only the common member is handled here: a ustar header of a regular file ('0') whose fields are as tar
 * writes them (octal digits, NUL/space terminators), whose byte sum matches its checksum exactly, with no
 * prefix and a printable ASCII name that passes the cheap safety tests of `shards._unsafe_reason`, and
 * whose data lies inside the buffer. Every other header (end of archive, pax, GNU long names, other
 * types, damage, truncation) is handed to `slow(position, previous)`, the Python parser, which refuses
 * it with a named error or returns `(name, key, extension, data offset, size, next position, is_block)`,
 * or None at the end-of-archive block. So every refusal and its message is decided in one place, and this
 * file accepts a subset of what the Python parser accepts, with the same result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BLOCK 512
#define NAME_BYTES 100
#define BLOCK_PREFIX "zstd-block-"
#define BLOCK_PREFIX_BYTES 11
#define BLOCK_SUFFIX ".tar.zst"
#define BLOCK_SUFFIX_BYTES 8
#define BLOCK_DIGITS 6  /* at least: the writer numbers blocks past 999999 with more */
#define CACHED_EXTENSIONS 8
/* How far past the next header the walk prefetches when it copies members out (bytes mode): about one
 * small member, so that while Python builds a sample from the copy of one, the next is on its way from
 * memory. 6-12 KiB all gained about a tenth on 4 KiB members (benchmarks/RESULTS.md "Shards"). */
#define COPY_AHEAD 8192
#define CACHE_LINE 64

typedef struct {
    PyObject_HEAD
    PyObject *view;
    Py_buffer buffer;
    int have_buffer;
    PyObject *archive;
    PyObject *slow;
    PyObject *expand;
    PyObject *error;
    PyObject *tag;  /* NULL: items are (key, sample) */
    int views;
    int done;
    Py_ssize_t position;
    Py_ssize_t prefetched;  /* the buffer's lines are prefetched up to here */
    /* the last member's name, for the slow parser's errors: a str, or a span of the buffer */
    PyObject *previous;
    Py_ssize_t previous_start, previous_length;
    /* the sample being grouped, and the samples of a zstd block, due after it */
    PyObject *key;
    PyObject *sample;
    PyObject *block_samples;
    /* the fast path's extension strings so far: a shard repeats a few extensions, each made and hashed once */
    PyObject *extensions[CACHED_EXTENSIONS];
    int extension_count;
} Walker;

/* One member, resolved by the fast path or the slow parser. */
typedef struct {
    PyObject *name;       /* NULL on the fast path: the name is the span below */
    Py_ssize_t name_start, name_length;
    PyObject *key;        /* NULL on the fast path: the key is the span below */
    Py_ssize_t key_length;
    PyObject *extension;
    Py_ssize_t data_start, size, next;
    int is_block;
} Member;

static void clear_member(Member *member)
{
    Py_CLEAR(member->name);
    Py_CLEAR(member->key);
    Py_CLEAR(member->extension);
}

/* 11 octal digits (sizes up to 8 GiB) and offsets past them must fit. */
_Static_assert(sizeof(Py_ssize_t) >= 8, "the tar walk needs 64-bit sizes");

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the tar walk reads octal fields eight bytes at a time, first byte lowest: a little-endian CPU"
#endif

static uint64_t load8(const unsigned char *bytes)
{
    uint64_t word;
    memcpy(&word, bytes, sizeof word);
    return word;
}

/* The value of 8 octal digits in a little-endian word (its first byte the most significant digit), or
 * -1 when a byte is not a digit '0'-'7'. Neighbouring digits are merged pairwise: 16, 32, then 64 bits. */
static Py_ssize_t octal8(uint64_t word)
{
    if ((word & 0xF8F8F8F8F8F8F8F8u) != 0x3030303030303030u)
        return -1;
    uint64_t digits = word & 0x0707070707070707u;
    digits = ((digits & 0x0007000700070007u) << 3) | ((digits >> 8) & 0x0007000700070007u);
    digits = ((digits & 0x0000003F0000003Fu) << 6) | ((digits >> 16) & 0x0000003F0000003Fu);
    return (Py_ssize_t)(((digits & 0xFFFu) << 12) | ((digits >> 32) & 0xFFFu));
}

/* The size field: 11 octal digits at 124, then a NUL (checked by the caller); -1 if not digits. Read as
 * digits 0-7, and as '0' followed by digits 4-10, which overlap and together cover all eleven. */
static Py_ssize_t size_field(const unsigned char *header)
{
    Py_ssize_t high = octal8(load8(header + 124));
    Py_ssize_t low = octal8((load8(header + 128) << 8) | '0');
    return high < 0 || low < 0 ? -1 : (high >> 12) << 21 | low;
}

/* The checksum field: 6 octal digits at 148, then a NUL and a space; -1 otherwise. */
static Py_ssize_t checksum_field(const unsigned char *header)
{
    uint64_t word = load8(header + 148);
    if (word >> 48 != 0x2000)  /* bytes 154 and 155: NUL, space */
        return -1;
    return octal8((word << 16) | 0x3030);
}

/* Whether the basename `base[:length]` (what follows a member name's last slash) names a zstd block. */
static int is_block_name(const unsigned char *base, Py_ssize_t length)
{
    Py_ssize_t digits = length - BLOCK_PREFIX_BYTES - BLOCK_SUFFIX_BYTES;
    if (digits < BLOCK_DIGITS || memcmp(base, BLOCK_PREFIX, BLOCK_PREFIX_BYTES) != 0)
        return 0;
    for (Py_ssize_t i = 0; i < digits; i++)
        if (base[BLOCK_PREFIX_BYTES + i] < '0' || base[BLOCK_PREFIX_BYTES + i] > '9')
            return 0;
    return memcmp(base + BLOCK_PREFIX_BYTES + digits, BLOCK_SUFFIX, BLOCK_SUFFIX_BYTES) == 0;
}

/* The sum of a header's 512 bytes. SSE2's sum of absolute differences against zero adds 16 bytes per
 * instruction: the byte loop it replaces, widened to 64 bits by the compiler, was a third of the walk. */
static Py_ssize_t header_byte_sum(const unsigned char *header)
{
#if defined(__SSE2__)
    __m128i zero = _mm_setzero_si128();
    __m128i total = zero;
#pragma GCC unroll 32
    for (int i = 0; i < BLOCK; i += 16)
        total = _mm_add_epi64(total, _mm_sad_epu8(_mm_loadu_si128((const __m128i *)(header + i)), zero));
    return (Py_ssize_t)(_mm_cvtsi128_si64(total) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(total, total)));
#else
    unsigned int sum = 0;
    for (int i = 0; i < BLOCK; i++)
        sum += header[i];
    return sum;
#endif
}

#if defined(__SSE2__)
/* The member name in the 100-byte name field: 1 with its `length` (to the first NUL), the start of its
 * basename (`base`, after the last slash) and the first dot of the basename (`dot`, -1 if none), or 0 when
 * a byte of it is not printable ASCII or is a backslash, or two dots touch (".."). 16 bytes at a time, up
 * to the chunk holding the end: the loop one byte at a time was a sixth of the walk's instructions. */
static int scan_name(const unsigned char *header, Py_ssize_t *length, Py_ssize_t *base, Py_ssize_t *dot)
{
    *base = 0;
    *dot = -1;
    unsigned dot_before = 0;  /* whether the byte before this chunk is a dot */
    for (int i = 0;; i += 16) {  /* the chunk at 96 holds the last 4 bytes of the field: every name ends */
        __m128i bytes = _mm_loadu_si128((const __m128i *)(header + i));  /* at 96: into the mode field */
        unsigned ends = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_setzero_si128()));
        int in_chunk = ends != 0 ? __builtin_ctz(ends) : 16;
        if (in_chunk > NAME_BYTES - i)
            in_chunk = NAME_BYTES - i;
        unsigned name = (1u << in_chunk) - 1;
        unsigned printable = (unsigned)_mm_movemask_epi8(_mm_and_si128(_mm_cmpgt_epi8(bytes, _mm_set1_epi8(' ')),
                                                                       _mm_cmplt_epi8(bytes, _mm_set1_epi8(127))));
        unsigned backslashes = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8('\\')));
        unsigned dots = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8('.'))) & name;
        unsigned slashes = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8('/'))) & name;
        if (((~printable | backslashes) & name) != 0 || (dots & (dots << 1 | dot_before)) != 0)
            return 0;
        dot_before = dots >> 15;
        if (slashes != 0) {
            int last = 31 - __builtin_clz(slashes);
            *base = i + last + 1;
            *dot = -1;
            dots &= ~((2u << last) - 1);
        }
        if (*dot < 0 && dots != 0)
            *dot = i + __builtin_ctz(dots);
        if (in_chunk < 16) {
            *length = i + in_chunk;
            return 1;
        }
    }
}
#else
static int scan_name(const unsigned char *header, Py_ssize_t *length, Py_ssize_t *base, Py_ssize_t *dot)
{
    Py_ssize_t end = 0;
    *base = 0;
    *dot = -1;
    while (end < NAME_BYTES && header[end] != 0) {
        unsigned char c = header[end];
        if (c <= ' ' || c > '~' || c == '\\')
            return 0;
        if (c == '/') {
            *dot = -1;
            *base = end + 1;
        } else if (c == '.') {
            if (end > 0 && header[end - 1] == '.')
                return 0;  /* ".." */
            if (*dot < 0)
                *dot = end;
        }
        end++;
    }
    *length = end;
    return 1;
}
#endif

/* The extension `text[:length]` (printable ASCII) as a str, from the walker's cache when it was seen before. */
static PyObject *extension_string(Walker *self, const unsigned char *text, Py_ssize_t length)
{
    for (int i = 0; i < self->extension_count; i++) {
        PyObject *cached = self->extensions[i];
        if (PyUnicode_GET_LENGTH(cached) == length && memcmp(PyUnicode_1BYTE_DATA(cached), text, length) == 0)
            return Py_NewRef(cached);
    }
    PyObject *extension = PyUnicode_FromStringAndSize((const char *)text, length);
    if (extension != NULL && self->extension_count < CACHED_EXTENSIONS)
        self->extensions[self->extension_count++] = Py_NewRef(extension);
    return extension;
}

/* Prefetch what the walk reads after the member ending at `next`: its header, which lies a member apart,
 * too far for the hardware prefetcher (loading each header from memory was most of the time per 4 KiB
 * member without this), and in bytes mode the data that follows, which is about to be copied. Each line
 * is prefetched once. With views the data is not read here: prefetching it slowed 4 KiB members by a tenth. */
static void prefetch_ahead(Walker *self, Py_ssize_t next)
{
    Py_ssize_t until = next + (self->views ? BLOCK : COPY_AHEAD);
    if (until > self->buffer.len)
        until = self->buffer.len;
    Py_ssize_t line = (self->prefetched > next ? self->prefetched : next) & ~(Py_ssize_t)(CACHE_LINE - 1);
    for (; line < until; line += CACHE_LINE)
        __builtin_prefetch((const char *)self->buffer.buf + line);
    if (until > self->prefetched)
        self->prefetched = until;
}

/* The common member at `position`, or 0 when the slow parser must decide: also for any name webdataset
 * may skip or lowercase (`shards.split_member_name`). */
static int fast_member(Walker *self, Py_ssize_t position, Member *member)
{
    const unsigned char *data = self->buffer.buf;
    Py_ssize_t end = self->buffer.len;
    if (end - position < BLOCK)
        return 0;
    const unsigned char *header = data + position;
    if (header[156] != '0' || header[345] != 0 || header[135] != 0)
        return 0;
    Py_ssize_t size = size_field(header), checksum = checksum_field(header);
    if (size < 0 || checksum < 0)
        return 0;
    /* the checksum field itself counts as eight spaces */
    Py_ssize_t sum = header_byte_sum(header) + 8 * ' ';
    for (int i = 148; i < 156; i++)
        sum -= header[i];
    if (sum != checksum)
        return 0;
    Py_ssize_t length, base, dot;
    if (!scan_name(header, &length, &base, &dot))
        return 0;
    if (length == 0 || header[0] == '/' || (length > 1 && header[1] == ':'))
        return 0;
    if (dot <= base || (header[0] == '_' && header[1] == '_'))
        return 0;
    for (Py_ssize_t i = dot + 1; i < length; i++)
        if (header[i] >= 'A' && header[i] <= 'Z')
            return 0;
    Py_ssize_t padded = (size + BLOCK - 1) / BLOCK * BLOCK;
    if (end - position - BLOCK < padded)
        return 0;
    member->extension = extension_string(self, header + dot + 1, length - dot - 1);
    if (member->extension == NULL)
        return -1;
    member->name_start = position;
    member->name_length = length;
    member->key_length = dot;
    member->data_start = position + BLOCK;
    member->size = size;
    member->next = position + BLOCK + padded;
    member->is_block = is_block_name(header + base, length - base);
    prefetch_ahead(self, member->next);
    return 1;
}

static PyObject *previous_name(Walker *self)
{
    if (self->previous != NULL)
        return Py_NewRef(self->previous);
    if (self->previous_start < 0)
        Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize((const char *)self->buffer.buf + self->previous_start, self->previous_length);
}

/* The member at `position` from the Python parser: 1, or 0 at the end of the archive, or -1 on error. */
static int slow_member(Walker *self, Py_ssize_t position, Member *member)
{
    PyObject *previous = previous_name(self);
    if (previous == NULL)
        return -1;
    PyObject *result = PyObject_CallFunction(self->slow, "nO", position, previous);
    Py_DECREF(previous);
    if (result == NULL)
        return -1;
    if (result == Py_None) {
        Py_DECREF(result);
        return 0;
    }
    PyObject *name, *key, *extension;
    int ok = PyArg_ParseTuple(result, "UUUnnnp", &name, &key, &extension, &member->data_start, &member->size,
                              &member->next, &member->is_block);
    if (ok && (member->data_start < 0 || member->size < 0 || member->next < member->data_start + member->size
               || member->next > self->buffer.len || member->next <= position)) {
        PyErr_Format(PyExc_SystemError, "slow tar parser returned an impossible member at byte %zd", position);
        ok = 0;
    }
    if (ok) {
        member->name = Py_NewRef(name);
        member->key = Py_NewRef(key);
        member->extension = Py_NewRef(extension);
    }
    Py_DECREF(result);
    return ok ? 1 : -1;
}

static PyObject *member_data(Walker *self, Member *member)
{
    if (self->views)
        return PySequence_GetSlice(self->view, member->data_start, member->data_start + member->size);
    return PyBytes_FromStringAndSize((const char *)self->buffer.buf + member->data_start, member->size);
}

/* Whether `member` belongs to the sample being grouped: same key. */
static int same_key(Walker *self, Member *member)
{
    if (self->key == NULL)
        return 0;
    if (member->key != NULL)
        return PyUnicode_Compare(self->key, member->key) == 0;
    /* the fast path's keys are printable ASCII, so a key that is not ASCII differs */
    return PyUnicode_IS_ASCII(self->key) && PyUnicode_GET_LENGTH(self->key) == member->key_length
           && memcmp(PyUnicode_1BYTE_DATA(self->key), (const char *)self->buffer.buf + member->name_start,
                     member->key_length) == 0;
}

static PyObject *member_key(Walker *self, Member *member)
{
    if (member->key != NULL)
        return Py_NewRef(member->key);
    /* the fast path's names are printable ASCII: copied, not decoded */
    PyObject *key = PyUnicode_New(member->key_length, 127);
    if (key != NULL)
        memcpy(PyUnicode_1BYTE_DATA(key), (const char *)self->buffer.buf + member->name_start, member->key_length);
    return key;
}

static PyObject *member_name(Walker *self, Member *member)
{
    if (member->name != NULL)
        return Py_NewRef(member->name);
    return PyUnicode_FromStringAndSize((const char *)self->buffer.buf + member->name_start, member->name_length);
}

/* Hand over the sample being grouped as `(key, sample)` or `(tag, key, sample)`. */
static PyObject *take_sample(Walker *self)
{
    PyObject *item = self->tag != NULL ? PyTuple_Pack(3, self->tag, self->key, self->sample)
                                       : PyTuple_Pack(2, self->key, self->sample);
    Py_CLEAR(self->key);
    Py_CLEAR(self->sample);
    return item;
}

static void remember_previous(Walker *self, Member *member)
{
    Py_CLEAR(self->previous);
    if (member->name != NULL) {
        self->previous = Py_NewRef(member->name);
    } else {
        self->previous_start = member->name_start;
        self->previous_length = member->name_length;
    }
}

/* An iterator over the samples of the zstd block `member`, from `expand`. */
static PyObject *expand_block(Walker *self, Member *member)
{
    PyObject *name = member_name(self, member);
    PyObject *data = name == NULL ? NULL : PySequence_GetSlice(self->view, member->data_start,
                                                                member->data_start + member->size);
    PyObject *samples = data == NULL ? NULL : PyObject_CallFunctionObjArgs(self->expand, name, data, NULL);
    PyObject *iterator = samples == NULL ? NULL : PyObject_GetIter(samples);
    Py_XDECREF(name);
    Py_XDECREF(data);
    Py_XDECREF(samples);
    return iterator;
}

/* The next sample of the block being expanded, or NULL: at its end (cleared) or on an error (set). */
static PyObject *next_block_sample(Walker *self)
{
    PyObject *item = PyIter_Next(self->block_samples);
    if (item == NULL) {
        Py_CLEAR(self->block_samples);
        return NULL;
    }
    if (self->tag == NULL)
        return item;
    PyObject *tagged = NULL;
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2)
        tagged = PyTuple_Pack(3, self->tag, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1));
    else
        PyErr_Format(PyExc_SystemError, "expand must yield (key, sample) pairs, not %R", item);
    Py_DECREF(item);
    return tagged;
}

/* Add a member to the sample being grouped, or start a new sample with it and hand over the finished
 * one in `*finished`. Returns 0, or -1 with an error set. */
static int group(Walker *self, Member *member, PyObject **finished)
{
    *finished = NULL;
    if (same_key(self, member)) {
        PyObject *data = member_data(self, member);
        if (data == NULL)
            return -1;
        /* one lookup: the sample grows unless it holds the extension already (`data` may be the shared
         * empty bytes, so identity with the value held tells nothing) */
        Py_ssize_t before = PyDict_GET_SIZE(self->sample);
        PyObject *held = PyDict_SetDefault(self->sample, member->extension, data);
        int added = PyDict_GET_SIZE(self->sample) > before;
        Py_DECREF(data);
        if (held != NULL && !added)
            PyErr_Format(self->error, "%U: sample %R has member %R twice", self->archive, self->key,
                         member->extension);
        return added ? 0 : -1;
    }
    PyObject *key = member_key(self, member);
    PyObject *data = key == NULL ? NULL : member_data(self, member);
    PyObject *sample = data == NULL ? NULL : PyDict_New();
    int failed = sample == NULL || PyDict_SetItem(sample, member->extension, data) < 0;
    Py_XDECREF(data);
    if (!failed && self->key != NULL) {
        *finished = take_sample(self);
        failed = *finished == NULL;
    }
    if (failed) {
        Py_XDECREF(key);
        Py_XDECREF(sample);
        return -1;
    }
    self->key = key;
    self->sample = sample;
    return 0;
}

static PyObject *walker_next(Walker *self)
{
    while (!self->done) {
        if (self->block_samples != NULL) {
            PyObject *item = next_block_sample(self);
            if (item != NULL || PyErr_Occurred())
                return item;
        }
        Member member = {0};
        int found = 0;
        if (self->position < self->buffer.len) {
            found = fast_member(self, self->position, &member);
            if (found == 0)
                found = slow_member(self, self->position, &member);
        }
        if (found < 0) {
            clear_member(&member);
            return NULL;
        }
        if (found == 0) {
            self->done = 1;
            break;
        }
        self->position = member.next;
        remember_previous(self, &member);
        if (member.is_block) {
            self->block_samples = expand_block(self, &member);
            clear_member(&member);
            if (self->block_samples == NULL)
                return NULL;
            if (self->key != NULL)
                return take_sample(self);
            continue;
        }
        PyObject *finished;
        int failed = group(self, &member, &finished);
        clear_member(&member);
        if (failed || finished != NULL)
            return finished;
    }
    return self->key != NULL ? take_sample(self) : NULL;
}

static int walker_init(Walker *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"view", "archive", "views", "slow", "expand", "error", "tag", NULL};
    PyObject *view, *archive, *slow, *expand, *error, *tag = Py_None;
    int views;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!UpOOO|O", keywords, &PyMemoryView_Type, &view, &archive,
                                     &views, &slow, &expand, &error, &tag))
        return -1;
    if (self->have_buffer) {
        PyErr_SetString(PyExc_TypeError, "SampleWalker is initialised once");
        return -1;
    }
    if (PyObject_GetBuffer(view, &self->buffer, PyBUF_SIMPLE) < 0)
        return -1;
    self->have_buffer = 1;
    self->view = Py_NewRef(view);
    self->archive = Py_NewRef(archive);
    self->slow = Py_NewRef(slow);
    self->expand = Py_NewRef(expand);
    self->error = Py_NewRef(error);
    self->tag = tag == Py_None ? NULL : Py_NewRef(tag);
    self->views = views;
    self->previous_start = -1;
    return 0;
}

static int walker_traverse(Walker *self, visitproc visit, void *arg)
{
    Py_VISIT(self->view);
    Py_VISIT(self->archive);
    Py_VISIT(self->slow);
    Py_VISIT(self->expand);
    Py_VISIT(self->error);
    Py_VISIT(self->tag);
    Py_VISIT(self->previous);
    Py_VISIT(self->key);
    Py_VISIT(self->sample);
    Py_VISIT(self->block_samples);
    for (int i = 0; i < self->extension_count; i++)
        Py_VISIT(self->extensions[i]);
    return 0;
}

static int walker_clear(Walker *self)
{
    if (self->have_buffer) {
        PyBuffer_Release(&self->buffer);
        self->have_buffer = 0;
    }
    Py_CLEAR(self->view);
    Py_CLEAR(self->archive);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->expand);
    Py_CLEAR(self->error);
    Py_CLEAR(self->tag);
    Py_CLEAR(self->previous);
    Py_CLEAR(self->key);
    Py_CLEAR(self->sample);
    Py_CLEAR(self->block_samples);
    for (int i = 0; i < self->extension_count; i++)
        Py_CLEAR(self->extensions[i]);
    self->extension_count = 0;
    return 0;
}

static void walker_dealloc(Walker *self)
{
    PyObject_GC_UnTrack(self);
    walker_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dataset_assets.core._tarwalk.SampleWalker",
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("Iterate (key, {extension: data}), or (tag, key, {extension: data}), over the tar in a "
                        "memoryview; see the module source."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)walker_init,
    .tp_traverse = (traverseproc)walker_traverse,
    .tp_clear = (inquiry)walker_clear,
    .tp_dealloc = (destructor)walker_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)walker_next,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dataset_assets.core._tarwalk",
    .m_doc = PyDoc_STR("The compiled header walk and sample grouping of core.shards for local shards."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__tarwalk(void)
{
    if (PyType_Ready(&WalkerType) < 0)
        return NULL;
    PyObject *result = PyModule_Create(&module);
    if (result == NULL)
        return NULL;
    if (PyModule_AddObjectRef(result, "SampleWalker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}
