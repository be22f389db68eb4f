/* bench/compress_levels.c: compression ratio and CPU per byte of gzip (zlib), brotli and zstd at
 * every level, over the corpus that bench/corpus.py writes (issue #13).
 *
 *     build/bench/compress_levels [-t MS] [-r ROUNDS] [-o ROWS.tsv] [-e ENC] [-l LEVEL] [-w] CORPUS_DIR
 *
 * Each file is compressed as src/filter/compress.c compresses a streamed response: a new
 * encoder per response, with the same parameters (gzip: deflateInit2 with window 15 and
 * memLevel 8; brotli: quality = level, lgwin 18; zstd: the level, windowLog 19), fed in 16 KiB
 * pieces as bodies stream, finished at the end; its setup and teardown are counted, as a
 * response pays them. With -w, as src/filter/encode.c compresses a cached response once (the
 * whole body in one call of each library's one-shot function: the size is known).
 * Time is the thread's CPU time: a file is compressed again and again for at least MS
 * milliseconds (default 20), ROUNDS times (default 3), and the median round counts. Every
 * output is decompressed once and compared with the input (zlib and zstd here; brotli's
 * decoder is not linked by portico, so its output is only checked to be non-empty).
 *
 * Prints, per encoding and level: the share of bytes saved over the corpus and per kind (json,
 * html, css, js: sums of compressed over sums of original sizes), the CPU time per input byte
 * over the corpus, and the CPU time of the 32 KiB JSON response alone. ROWS.tsv gets one row
 * per file, encoding and level.
 */
#include <brotli/encode.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

enum { GZIP, BR, ZSTD, NENC };
static const char *const enc_name[NENC] = { "gzip", "br", "zstd" };
static const int lo[NENC] = { 1, 0, 1 }, hi[NENC] = { 9, 11, 19 };
#define PIECE 16384
#define MAXFILES 64
#define NKINDS 4
static const char *const kinds[NKINDS] = { "json", "html", "css", "js" };

struct file {
    char kind[8], name[128];
    unsigned char *data;
    size_t len;
};

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "compress_levels: %s\n", what);
    exit(2);
}

/* A whole body at once, as filter/encode.c makes the cache's stored variants: brotli's one-shot
 * call (lgwin 22, text mode), ZSTD_compress (parameters for the known size), gzip in one deflate
 * with memLevel 9. */
static size_t compress_whole(int enc, int level, const unsigned char *in, size_t len, unsigned char *out,
                             size_t cap)
{
    if (enc == BR) {
        size_t n = cap;
        if (!BrotliEncoderCompress(level, 22, BROTLI_MODE_TEXT, len, in, &n, out))
            die("BrotliEncoderCompress");
        return n;
    }
    if (enc == ZSTD) {
        size_t r = ZSTD_compress(out, cap, in, len, level);
        if (ZSTD_isError(r))
            die(ZSTD_getErrorName(r));
        return r;
    }
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        die("deflateInit2");
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END)
        die("deflate");
    size_t n = z.total_out;
    deflateEnd(&z);
    return n;
}

/* Compress in into out (cap bytes) as compress.c does a streamed response, or (whole) as
 * encode.c does a cached one; returns the compressed length. */
static size_t compress_once(int enc, int level, bool whole, const unsigned char *in, size_t len,
                            unsigned char *out, size_t cap)
{
    size_t done = 0, pos = 0;
    if (whole)
        return compress_whole(enc, level, in, len, out, cap);
    switch (enc) {
    case GZIP: {
        z_stream z;
        memset(&z, 0, sizeof z);
        if (deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            die("deflateInit2");
        int rc;
        do {
            size_t n = len - pos < PIECE ? len - pos : PIECE;
            bool end = pos + n == len;
            z.next_in = (Bytef *)(uintptr_t)(in + pos);
            z.avail_in = (uInt)n;
            do {
                z.next_out = out + done;
                z.avail_out = (uInt)(cap - done < PIECE ? cap - done : PIECE);
                size_t before = z.avail_out;
                rc = deflate(&z, end ? Z_FINISH : Z_NO_FLUSH);
                done += before - z.avail_out;
            } while (z.avail_in || (end && rc != Z_STREAM_END));
            pos += n;
        } while (pos < len);
        deflateEnd(&z);
        return done;
    }
    case BR: {
        BrotliEncoderState *b = BrotliEncoderCreateInstance(NULL, NULL, NULL);
        if (!b)
            die("BrotliEncoderCreateInstance");
        BrotliEncoderSetParameter(b, BROTLI_PARAM_QUALITY, (uint32_t)level);
        BrotliEncoderSetParameter(b, BROTLI_PARAM_LGWIN, 18);
        do {
            size_t n = len - pos < PIECE ? len - pos : PIECE;
            bool end = pos + n == len;
            size_t ai = n;
            const uint8_t *ni = in + pos;
            do {
                size_t ao = cap - done < PIECE ? cap - done : PIECE, room = ao;
                uint8_t *no = out + done;
                if (!BrotliEncoderCompressStream(b, end ? BROTLI_OPERATION_FINISH : BROTLI_OPERATION_PROCESS,
                                                 &ai, &ni, &ao, &no, NULL))
                    die("BrotliEncoderCompressStream");
                done += room - ao;
            } while (ai || (end && !BrotliEncoderIsFinished(b)) || BrotliEncoderHasMoreOutput(b));
            pos += n;
        } while (pos < len);
        BrotliEncoderDestroyInstance(b);
        return done;
    }
    case ZSTD: {
        ZSTD_CCtx *c = ZSTD_createCCtx();
        if (!c)
            die("ZSTD_createCCtx");
        ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
        ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, 19);
        do {
            size_t n = len - pos < PIECE ? len - pos : PIECE;
            bool end = pos + n == len;
            ZSTD_inBuffer ib = { in + pos, n, 0 };
            size_t left;
            do {
                ZSTD_outBuffer ob = { out + done, cap - done < PIECE ? cap - done : PIECE, 0 };
                left = ZSTD_compressStream2(c, &ob, &ib, end ? ZSTD_e_end : ZSTD_e_continue);
                if (ZSTD_isError(left))
                    die(ZSTD_getErrorName(left));
                done += ob.pos;
            } while (ib.pos < ib.size || (end && left));
            pos += n;
        } while (pos < len);
        ZSTD_freeCCtx(c);
        return done;
    }
    }
    return 0;
}

static void check(int enc, const unsigned char *orig, size_t len, const unsigned char *comp, size_t clen)
{
    unsigned char *back = malloc(len + 1);
    if (!back)
        die("out of memory");
    size_t got = 0;
    if (enc == GZIP) {
        z_stream z;
        memset(&z, 0, sizeof z);
        inflateInit2(&z, 15 + 16);
        z.next_in = (Bytef *)(uintptr_t)comp;
        z.avail_in = (uInt)clen;
        z.next_out = back;
        z.avail_out = (uInt)len + 1;
        if (inflate(&z, Z_FINISH) != Z_STREAM_END)
            die("gzip output does not decode");
        got = len + 1 - z.avail_out;
        inflateEnd(&z);
    } else if (enc == ZSTD) {
        got = ZSTD_decompress(back, len + 1, comp, clen);
        if (ZSTD_isError(got))
            die("zstd output does not decode");
    } else {
        got = clen ? len : 0;
        memcpy(back, orig, len);
    }
    if (got != len || memcmp(back, orig, len))
        die("a round trip changed the data");
    free(back);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    double min_s = 0.020;
    int rounds = 3, opt, only_level = -1;
    bool whole = false;
    const char *rows_path = NULL, *only_enc = NULL;
    while ((opt = getopt(argc, argv, "t:r:o:e:l:w")) != -1) {
        if (opt == 't')
            min_s = atof(optarg) / 1000;
        else if (opt == 'r')
            rounds = atoi(optarg);
        else if (opt == 'o')
            rows_path = optarg;
        else if (opt == 'e')
            only_enc = optarg;
        else if (opt == 'l')
            only_level = atoi(optarg);
        else if (opt == 'w')
            whole = true;
        else
            return 2;
    }
    if (optind != argc - 1 || rounds < 1 || rounds > 15) {
        fprintf(stderr, "usage: %s [-t MS] [-r ROUNDS] [-o ROWS.tsv] [-e gzip|br|zstd] [-l LEVEL] [-w] CORPUS_DIR\n",
                argv[0]);
        return 2;
    }
    const char *dir = argv[optind];
    char path[4096];
    snprintf(path, sizeof path, "%s/MANIFEST.tsv", dir);
    FILE *m = fopen(path, "r");
    if (!m) {
        fprintf(stderr, "compress_levels: %s: %s (run bench/corpus.py first)\n", path, strerror(errno));
        return 2;
    }
    static struct file files[MAXFILES];
    int nf = 0, json32 = -1;
    char line[1024];
    size_t maxlen = 0;
    while (fgets(line, sizeof line, m)) {
        struct file *f = &files[nf];
        if (!strncmp(line, "kind\t", 5) || nf == MAXFILES)
            continue;
        if (sscanf(line, "%7[^\t]\t%127[^\t]", f->kind, f->name) != 2)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, f->name);
        FILE *in = fopen(path, "rb");
        if (!in || fseek(in, 0, SEEK_END) || (f->len = (size_t)ftell(in)) == 0 || fseek(in, 0, SEEK_SET))
            die("cannot read a corpus file");
        if (!(f->data = malloc(f->len)) || fread(f->data, 1, f->len, in) != f->len)
            die("cannot read a corpus file");
        fclose(in);
        if (!strcmp(f->name, "orders-32k.json"))
            json32 = nf;
        if (f->len > maxlen)
            maxlen = f->len;
        nf++;
    }
    fclose(m);
    if (!nf)
        die("empty corpus");
    size_t cap = maxlen + maxlen / 2 + 65536;
    unsigned char *out = malloc(cap);
    FILE *rows = rows_path ? fopen(rows_path, "w") : NULL;
    if (!out || (rows_path && !rows))
        die("cannot allocate or open the rows file");
    if (rows)
        fprintf(rows, "kind\tname\tbytes\tencoding\tlevel\tcompressed\tns_per_byte\n");

    size_t total_in = 0, kind_in[NKINDS] = { 0 };
    for (int i = 0; i < nf; i++) {
        total_in += files[i].len;
        for (int k = 0; k < NKINDS; k++)
            if (!strcmp(files[i].kind, kinds[k]))
                kind_in[k] += files[i].len;
    }
    printf("%s; corpus: %d files, %zu bytes (json %zu, html %zu, css %zu, js %zu); CPU time, median of %d "
           "rounds of >= %.0f ms\n\n", whole ? "whole bodies at once, as filter/encode.c (cache_level)"
                                           : "streamed in 16 KiB pieces, as filter/compress.c (level)",
           nf, total_in, kind_in[0], kind_in[1], kind_in[2], kind_in[3], rounds, min_s * 1000);
    printf("| encoding | level | saved, all | json | html | css | js | CPU ns/byte | MB/s | 32 KiB JSON: µs |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (int e = 0; e < NENC; e++) {
        if (only_enc && strcmp(only_enc, enc_name[e]))
            continue;
        for (int lvl = lo[e]; lvl <= hi[e]; lvl++) {
            if (only_level >= 0 && lvl != only_level)
                continue;
            size_t out_all = 0, kind_out[NKINDS] = { 0 };
            double secs = 0, json32_us = 0;
            for (int i = 0; i < nf; i++) {
                struct file *f = &files[i];
                size_t clen = compress_once(e, lvl, whole, f->data, f->len, out, cap);
                check(e, f->data, f->len, out, clen);
                double per[15];
                for (int r = 0; r < rounds; r++) {
                    long n = 0;
                    double t0 = cpu_now(), t;
                    do {
                        compress_once(e, lvl, whole, f->data, f->len, out, cap);
                        n++;
                    } while ((t = cpu_now() - t0) < min_s);
                    per[r] = t / n;
                }
                qsort(per, (size_t)rounds, sizeof per[0], cmp_double);
                double s = per[rounds / 2];
                secs += s;
                out_all += clen;
                for (int k = 0; k < NKINDS; k++)
                    if (!strcmp(f->kind, kinds[k]))
                        kind_out[k] += clen;
                if (i == json32)
                    json32_us = s * 1e6;
                if (rows)
                    fprintf(rows, "%s\t%s\t%zu\t%s\t%d\t%zu\t%.3f\n", f->kind, f->name, f->len, enc_name[e],
                            lvl, clen, s * 1e9 / f->len);
            }
            printf("| %s | %d | %.1f%% |", enc_name[e], lvl, 100.0 * (1 - (double)out_all / total_in));
            for (int k = 0; k < NKINDS; k++)
                printf(" %.1f%% |", kind_in[k] ? 100.0 * (1 - (double)kind_out[k] / kind_in[k]) : 0);
            printf(" %.2f | %.0f | %.0f |\n", secs * 1e9 / total_in, total_in / secs / 1e6, json32_us);
            fflush(stdout);
        }
    }
    if (rows)
        fclose(rows);
    free(out);
    return 0;
}
