/* tests/fuzz/fuzz_challenge.c: the proof-of-work challenge's handling of
 * client bytes (src/limit/challenge.c): the portico_pass cookie (found in the
 * Cookie field, then its expiry and signature checked), the answer at
 * /.well-known/portico-challenge?ts=&nonce=&c=&next= (its parameters, the
 * nonce, the work, and `next` decoded into the Location of the 303), and
 * the challenge page (the path written into an HTML attribute).
 *
 * challenge.c is linked alone: the few stage functions it calls
 * (proxy/stage.h) are played here, from the input.
 *
 * Input: byte 0: bit 0 bind_network, bits 1-2 the difficulty (0-3 zero
 * bits); then up to three lines: the client address (as trusted_proxies
 * made it), the request path with its query, the Cookie field. In the path
 * "{T}" becomes the current time, "{N}" the nonce the page would have given
 * this client at that time and "{C}" a counter that solves it; in the cookie
 * "{P}" becomes a pass for this client valid for an hour, "{X}" an expired
 * one. So the fuzzer reaches past the signature checks (which it could never
 * satisfy) and mutates around valid values.
 *
 * FUZZ_CHALLENGE_VERBOSE=1 says what each input got (binding, pass, answer).
 *
 * Invariants (the signatures are recomputed here with OpenSSL, from the
 * documented messages "n|binding|ts" and "p|binding|expiry"):
 *   - limit_pass_make writes "<expiry>.<64 hex of HMAC-SHA-256>" exactly;
 *   - the cookie check accepts a pass only if it is, byte for byte, one the
 *     signer made for this binding, not expired; and it accepts every such
 *     pass that is the first portico_pass cookie;
 *   - the answer is 303 only if the nonce is the one made for this binding
 *     at ts, ts is at most 10 minutes old, and SHA-256(nonce ":" c) has the
 *     difficulty's leading zero bits; then its Set-Cookie holds a pass the
 *     check accepts and its Location is a path on this site (one '/', then
 *     no '/' or '\', printable ASCII without spaces), the decoded `next`
 *     when that is one; a well-formed right answer is never refused;
 *   - the page is a 429 whose data-next attribute holds no quote, angle
 *     bracket, ampersand or apostrophe, whatever the path.
 */
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fuzz_common.h"
#include "conf/conf.h"
#include "limit/limit.h"
#include "proxy/stage.h"


/* ---------------------------------------------------------------- the stage, played */

struct stage_x {
    const char *ip, *path, *cookie;
    size_t ipn, pathn, cookien;
    bool has_cookie;
    int answers, status;
    char setc[512], loc[2048], *body;
    size_t setcn, locn, bodyn;
    bool has_setc, has_loc;
};

const char *stage_client_ip(struct stage_x *sx, size_t *len)
{
    *len = sx->ipn;
    return sx->ip;
}

const char *stage_path(struct stage_x *sx, size_t *len)
{
    *len = sx->pathn;
    return sx->path;
}

bool stage_request_header(struct stage_x *sx, const char *name, size_t name_len,
                          const char **value, size_t *value_len)
{
    CHECK(name_len == 6 && memcmp(name, "Cookie", 6) == 0);
    if (!sx->has_cookie)
        return false;
    *value = sx->cookie;
    *value_len = sx->cookien;
    return true;
}

static void body_free(struct stage_body *b) { free(b); }

struct stage_body *stage_body_copy(const void *data, size_t len)
{
    struct stage_body *b = malloc(sizeof *b + (len ? len : 1));
    CHECK(b);
    memcpy(b + 1, data, len);
    atomic_init(&b->refs, 1);
    b->len = len;
    b->data = (const char *)(b + 1);
    b->release = body_free;
    return b;
}

struct stage_body *stage_body_ref(struct stage_body *b)
{
    if (b)
        atomic_fetch_add(&b->refs, 1);
    return b;
}

void stage_body_unref(struct stage_body *b)
{
    if (b && atomic_fetch_sub(&b->refs, 1) == 1)
        b->release(b);
}

int stage_answer(struct stage_x *sx, int status, const struct stage_field *f, size_t n,
                 struct stage_body *body)
{
    sx->answers++;
    sx->status = status;
    for (size_t i = 0; i < n; i++) {
        CHECK(f[i].name_len == strlen(f[i].name));
        for (size_t k = 0; k < f[i].value_len; k++)       /* a field value, as HTTP has it */
            CHECK((unsigned char)f[i].value[k] >= 0x20 && f[i].value[k] != 0x7f);
        if (f[i].name_len == 10 && !memcmp(f[i].name, "Set-Cookie", 10)) {
            CHECK(f[i].value_len < sizeof sx->setc);
            memcpy(sx->setc, f[i].value, f[i].value_len);
            sx->setcn = f[i].value_len;
            sx->has_setc = true;
        } else if (f[i].name_len == 8 && !memcmp(f[i].name, "Location", 8)) {
            CHECK(f[i].value_len < sizeof sx->loc);
            memcpy(sx->loc, f[i].value, f[i].value_len);
            sx->locn = f[i].value_len;
            sx->has_loc = true;
        }
    }
    if (body) {
        sx->body = malloc(body->len + 1);
        CHECK(sx->body);
        memcpy(sx->body, body->data, body->len);
        sx->body[body->len] = '\0';
        sx->bodyn = body->len;
    }
    return 0;
}

/* ---------------------------------------------------------------- reference */

static const unsigned char KEY[32] = "fuzz_challenge: a fixed key....";

static void hmac_hex(const char *msg, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), KEY, sizeof KEY, (const unsigned char *)msg, n, md, &ml);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* What a pass is bound to: the address (at most 63 bytes), or with
 * bind_network its network: an IPv4 address without its last part, an
 * IPv6 one (anything with a ':') up to its fourth ':'. */
static size_t ref_binding(const char *ip, size_t n, bool network, char out[64])
{
    if (n > 63)
        n = 63;
    memcpy(out, ip, n);
    out[n] = '\0';
    n = strlen(out);            /* an address is text: a NUL ends it */
    if (network) {
        char *cut = NULL;
        if (strchr(out, ':')) {
            int groups = 0;
            for (char *p = out; *p && !cut; p++)
                if (*p == ':' && ++groups == 4)
                    cut = p;
        } else {
            cut = strrchr(out, '.');
        }
        if (cut) {
            *cut = '\0';
            n = (size_t)(cut - out);
        }
    }
    return n;
}

static void ref_nonce(const char *bind, long long ts, char out[33])
{
    char msg[128], mac[65];
    int n = snprintf(msg, sizeof msg, "n|%s|%lld", bind, ts);
    hmac_hex(msg, (size_t)n, mac);
    memcpy(out, mac, 32);
    out[32] = '\0';
}

static size_t ref_pass(const char *bind, long long exp, char out[128])
{
    char msg[128], mac[65];
    int n = snprintf(msg, sizeof msg, "p|%s|%lld", bind, exp);
    hmac_hex(msg, (size_t)n, mac);
    return (size_t)snprintf(out, 128, "%lld.%s", exp, mac);
}

static int zero_bits(const char *nonce, size_t nl, const char *c, size_t cl)
{
    char work[128];
    int wl = snprintf(work, sizeof work, "%.*s:%.*s", (int)nl, nonce, (int)cl, c);
    unsigned char md[32];
    SHA256((const unsigned char *)work, (size_t)wl, md);
    int bits = 0;
    for (int i = 0; i < 32; i++) {
        int b = 7;
        while (b >= 0 && !(md[i] >> b & 1))
            b--, bits++;
        if (b >= 0)
            break;
    }
    return bits;
}

/* The first element "name=..." of an '&'-separated query. */
static bool ref_query(const char *q, size_t qn, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i <= qn;) {
        size_t j = i;
        while (j < qn && q[j] != '&')
            j++;
        if (j - i > nl && q[i + nl] == '=' && !memcmp(q + i, name, nl)) {
            *v = q + i + nl + 1;
            *vl = j - i - nl - 1;
            return true;
        }
        i = j + 1;
    }
    return false;
}

/* The value of the first portico_pass cookie (pairs split on ';', leading
 * spaces skipped). */
static bool ref_cookie(const char *c, size_t n, const char **v, size_t *vl)
{
    static const char name[] = "portico_pass=";
    size_t i = 0;
    while (i < n) {
        while (i < n && (c[i] == ' ' || c[i] == ';'))
            i++;
        size_t s = i;
        while (i < n && c[i] != ';')
            i++;
        if (i - s >= sizeof name - 1 && !memcmp(c + s, name, sizeof name - 1)) {
            *v = c + s + sizeof name - 1;
            *vl = i - s - (sizeof name - 1);
            return true;
        }
    }
    return false;
}

static int hexd(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A Location that stays on this site: "/", then anything printable but not
 * a second '/' or a '\' (which browsers read as "//": another host). */
static bool local_path(const char *p, size_t n)
{
    if (n == 0 || p[0] != '/' || (n >= 2 && (p[1] == '/' || p[1] == '\\')))
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
            return false;
    return true;
}

/* ---------------------------------------------------------------- input */


static struct conf_challenge CC;

static void check_make(const char *bind, long long exp)
{
    char a[128], b[128];
    size_t an = limit_pass_make(&CC, bind, exp, a, sizeof a);
    size_t bn = ref_pass(bind, exp, b);
    CHECK(an == bn && memcmp(a, b, an) == 0);
}

static void fuzz_passed(struct stage_x *sx, const char *bind, long long now)
{
    bool ok = limit_challenge_passed(sx, &CC);
    long long after = (long long)time(NULL);
    CHECK(sx->answers == 0);
    const char *v;
    size_t vl;
    if (!sx->has_cookie || !ref_cookie(sx->cookie, sx->cookien, &v, &vl)) {
        CHECK(!ok);
        return;
    }
    /* made by the signer: "<exp>.<mac>" with exp its decimal and mac its HMAC */
    const char *dot = memchr(v, '.', vl);
    bool signed_ok = false;
    long long exp = 0;
    if (dot && dot > v && dot - v < 20) {
        char es[24];
        memcpy(es, v, (size_t)(dot - v));
        es[dot - v] = '\0';
        exp = strtoll(es, NULL, 10);
        char want[128];
        size_t wn = ref_pass(bind, exp, want);
        signed_ok = wn == vl && !memcmp(want, v, vl);
    }
    if (ok)
        CHECK(signed_ok && exp >= now);
    if (signed_ok && exp >= after)
        CHECK(ok);
}

static void fuzz_verify(struct stage_x *sx, const char *bind, unsigned difficulty,
                        long long now)
{
    int rc = limit_challenge_verify(sx, &CC);
    long long after = (long long)time(NULL);
    CHECK(rc == 0 && sx->answers == 1);
    CHECK(sx->status == 303 || sx->status == 403);

    /* the answer as the reference reads it */
    const char *q = memchr(sx->path, '?', sx->pathn);
    const char *ts = NULL, *nonce = NULL, *c = NULL, *next = NULL;
    size_t tsl = 0, nl = 0, cl = 0, xl = 0;
    size_t qn = q ? (size_t)(sx->path + sx->pathn - q - 1) : 0;
    bool well = q && ref_query(q + 1, qn, "ts", &ts, &tsl) &&
                ref_query(q + 1, qn, "nonce", &nonce, &nl) &&
                ref_query(q + 1, qn, "c", &c, &cl) && ref_query(q + 1, qn, "next", &next, &xl) &&
                tsl < 20 && nl == 32 && cl > 0 && cl < 20;
    long long t = 0;
    bool right = false;
    if (well) {
        char tz[24];
        memcpy(tz, ts, tsl);
        tz[tsl] = '\0';
        t = atoll(tz);
        char want[33];
        ref_nonce(bind, t, want);
        right = !memcmp(want, nonce, 32) && zero_bits(nonce, nl, c, cl) >= (int)difficulty;
    }
    if (sx->status == 403) {
        CHECK(!sx->has_setc && !sx->has_loc);
        /* refused: not a right answer, or one at the edge of its window */
        CHECK(!(right && t <= now && after - t <= 590));
        return;
    }
    CHECK(right && t <= after + 5 && now - t <= 600);

    /* the pass: portico_pass=<a pass the check accepts>; attributes */
    static const char pre[] = "portico_pass=";
    CHECK(sx->has_setc && sx->setcn > sizeof pre - 1 && !memcmp(sx->setc, pre, sizeof pre - 1));
    const char *pv = sx->setc + sizeof pre - 1;
    const char *semi = memchr(pv, ';', sx->setcn - (sizeof pre - 1));
    CHECK(semi);
    size_t pl = (size_t)(semi - pv);
    CHECK(limit_pass_check(&CC, bind, pv, pl, after));
    CHECK(!strncmp(semi, "; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax",
                   sx->setcn - (size_t)(semi - sx->setc)) &&
          sx->setcn - (size_t)(semi - sx->setc) == 46);
    long long exp = strtoll(pv, NULL, 10);
    CHECK(exp >= now + 3600 && exp <= after + 3600);
    char want[128];
    size_t wn = ref_pass(bind, exp, want);
    CHECK(wn == pl && !memcmp(want, pv, pl));

    /* back to a path on this site */
    CHECK(sx->has_loc && local_path(sx->loc, sx->locn));
    bool plain = xl < 1024;     /* decoded by the reference: strict %XX only */
    char d[1100];
    size_t dn = 0;
    for (size_t i = 0; plain && i < xl; i++) {
        if (next[i] == '%') {
            if (i + 2 >= xl || hexd(next[i + 1]) < 0 || hexd(next[i + 2]) < 0) {
                plain = false;
                break;
            }
            d[dn++] = (char)(hexd(next[i + 1]) * 16 + hexd(next[i + 2]));
            i += 2;
        } else {
            d[dn++] = next[i];
        }
    }
    if (plain) {
        if (local_path(d, dn))
            CHECK(sx->locn == dn && !memcmp(sx->loc, d, dn));
        else
            CHECK(sx->locn == 1 && sx->loc[0] == '/');
    }
}

static void fuzz_page(struct stage_x *sx)
{
    int rc = limit_challenge_page(sx, &CC);
    CHECK(rc == 0 && sx->answers == 1 && sx->status == 429 && sx->body);
    /* the first data-next is the attribute (what precedes it holds no
     * client byte); its value ends at the first quote, and what follows is
     * the page's own text */
    static const char attr[] = " data-next=\"";
    const char *a = strstr(sx->body, attr);
    CHECK(a);
    a += sizeof attr - 1;
    const char *end = strchr(a, '"');
    CHECK(end);
    for (const char *p = a; p < end; p++)
        CHECK(*p != '<' && *p != '>' && *p != '&' && *p != '\'');
    static const char rest[] = "\" data-verify=\"/.well-known/portico-challenge\"></div><script>";
    CHECK(!strncmp(end, rest, sizeof rest - 1));
}

static void reset(struct stage_x *sx)
{
    free(sx->body);
    sx->body = NULL;
    sx->answers = sx->status = 0;
    sx->has_setc = sx->has_loc = false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    memcpy(CC.key, KEY, sizeof KEY);
    CC.key_len = sizeof KEY;
    CC.ttl_ms = 3600000;
    CC.bind_network = data[0] & 1;
    CC.difficulty = (data[0] >> 1) & 3;

    /* the three lines */
    const char *s = (const char *)data + 1, *end = (const char *)data + size;
    const char *line[3] = { s, NULL, NULL };
    size_t len[3] = { 0, 0, 0 };
    int nlines = 1;
    for (int i = 0; i < 3; i++) {
        const char *nl = memchr(line[i], '\n', (size_t)(end - line[i]));
        len[i] = (size_t)((nl ? nl : end) - line[i]);
        if (!nl || i == 2)
            break;
        line[i + 1] = nl + 1;
        nlines++;
    }

    long long now = (long long)time(NULL);
    char bind[64];
    ref_binding(line[0], len[0], CC.bind_network, bind);
    check_make(bind, now + 3600);

    /* the markers' values */
    char tsv[24], nonce[33], cv[24], pass[128], old[128];
    snprintf(tsv, sizeof tsv, "%lld", now);
    ref_nonce(bind, now, nonce);
    for (unsigned long i = 0;; i++) {
        snprintf(cv, sizeof cv, "%lu", i);
        if (zero_bits(nonce, 32, cv, strlen(cv)) >= (int)CC.difficulty)
            break;
    }
    ref_pass(bind, now + 3600, pass);
    ref_pass(bind, now - 1, old);
    static const char *const pmark[] = { "{T}", "{N}", "{C}" };
    const char *pval[] = { tsv, nonce, cv };
    static const char *const cmark[] = { "{P}", "{X}" };
    const char *cval[] = { pass, old };
    static char path[4096], cookie[4096];
    size_t pathn = nlines > 1 ? fz_expand(line[1], len[1], path, sizeof path, pmark, pval, 3) : 0;
    size_t cookien = nlines > 2 ? fz_expand(line[2], len[2], cookie, sizeof cookie, cmark, cval, 2) : 0;

    struct stage_x sx = {
        .ip = line[0], .ipn = len[0], .path = path, .pathn = pathn,
        .cookie = cookie, .cookien = cookien, .has_cookie = nlines > 2,
    };
    fuzz_passed(&sx, bind, now);
    reset(&sx);
    bool verbose = getenv("FUZZ_CHALLENGE_VERBOSE") != NULL;
    if (verbose)
        fprintf(stderr, "binding \"%s\", pass %s\n", bind,
                limit_challenge_passed(&sx, &CC) ? "accepted" : "refused");
    fuzz_verify(&sx, bind, CC.difficulty, now);
    if (verbose)
        fprintf(stderr, "answer %d, Location %.*s\n", sx.status, (int)sx.locn, sx.loc);
    reset(&sx);
    fuzz_page(&sx);
    reset(&sx);
    return 0;
}
