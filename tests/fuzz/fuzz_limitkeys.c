/* tests/fuzz/fuzz_limitkeys.c: where rate limits and the login guard read
 * their keys from client bytes (src/limit/): a cookie of the Cookie field
 * (rate_limit key "cookie:NAME", limit_cookie_value) and a field of a login
 * body (login_guard account "form:NAME" or "json:NAME", limit_body_field).
 * fuzz_path reaches the form field (its stage configuration has
 * account: form:u), not the JSON one nor cookie keys.
 *
 * Input: byte 0 picks the parser (% 3: cookie, form, JSON); then the name,
 * up to the first newline (at most 32 bytes, cut at a NUL); the rest is
 * the field or body.
 *
 * Invariants. Cookie: the value found lies within the input and is the
 * first "NAME=" pair (pairs split on ';', spaces and ';' before a pair
 * skipped, the value up to the next ';'), checked against a reference.
 * Accounts (limit_accounts): at most LIMIT_ACCOUNTS values or -1, each
 * 1..LIMIT_ACCOUNT_MAX bytes, no ASCII capital, no two alike; a form body
 * gives exactly what a reference decoder gives (pairs split on '&', name and
 * value split on the first '=', '+' a space, %XX a byte); and, both for
 * form and JSON, spelling the accounts found another way (every byte
 * percent-encoded, every ASCII byte as \u00XX, in capitals) gives the same
 * accounts: one name, however written, is one key for the login guard.
 */
#include "fuzz_common.h"

#include "limit/limit.h"

static bool ref_cookie(const char *c, size_t n, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < n;) {
        while (i < n && (c[i] == ' ' || c[i] == ';'))
            i++;
        size_t s = i;
        while (i < n && c[i] != ';')
            i++;
        if (i - s >= nl + 1 && !memcmp(c + s, name, nl) && c[s + nl] == '=') {
            *v = c + s + nl + 1;
            *vl = i - s - nl - 1;
            return true;
        }
    }
    return false;
}

static int hexd(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* the reference: decode the whole pair into a buffer as long as the input,
 * then compare, lower, cut, dedupe */
static size_t ref_decode(const char *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '+') {
            out[o++] = ' ';
        } else if (p[i] == '%' && n - i >= 3 && hexd(p[i + 1]) >= 0 && hexd(p[i + 2]) >= 0) {
            out[o++] = (char)(hexd(p[i + 1]) * 16 + hexd(p[i + 2]));
            i += 2;
        } else {
            out[o++] = p[i];
        }
    }
    return o;
}

static int ref_form(const char *b, size_t n, const char *name, struct limit_account *out)
{
    int k = 0;
    char *nb = malloc(n + 1), *vb = malloc(n + 1);
    CHECK(nb && vb);
    size_t i = 0;
    for (;;) {
        size_t e = i;
        while (e < n && b[e] != '&')
            e++;
        size_t q = i;
        while (q < e && b[q] != '=')
            q++;
        if (q < e) {
            size_t nl = ref_decode(b + i, q - i, nb);
            if (nl == strlen(name) && !memcmp(nb, name, nl)) {
                size_t vl = ref_decode(b + q + 1, e - q - 1, vb);
                if (vl > LIMIT_ACCOUNT_MAX)
                    vl = LIMIT_ACCOUNT_MAX;
                for (size_t j = 0; j < vl; j++)
                    if (vb[j] >= 'A' && vb[j] <= 'Z')
                        vb[j] = (char)(vb[j] + 32);
                bool seen = vl == 0;
                for (int j = 0; j < k && !seen; j++)
                    seen = out[j].len == vl && !memcmp(out[j].v, vb, vl);
                if (!seen) {
                    if (k == LIMIT_ACCOUNTS) {
                        k = -1;
                        break;
                    }
                    memcpy(out[k].v, vb, vl);
                    out[k++].len = vl;
                }
            }
        }
        if (e >= n)
            break;
        i = e + 1;
    }
    free(nb);
    free(vb);
    return k;
}

static void check_accounts(const struct limit_account *a, int k)
{
    CHECK(k >= -1 && k <= LIMIT_ACCOUNTS);
    for (int i = 0; i < k; i++) {
        CHECK(a[i].len >= 1 && a[i].len <= LIMIT_ACCOUNT_MAX);
        for (size_t j = 0; j < a[i].len; j++)
            CHECK(!(a[i].v[j] >= 'A' && a[i].v[j] <= 'Z'));
        for (int j = 0; j < i; j++)
            CHECK(!(a[i].len == a[j].len && !memcmp(a[i].v, a[j].v, a[i].len)));
    }
}

static const char HEX[] = "0123456789ABCDEF";

/* the accounts found, written again in another spelling: every byte of
 * name and value percent-encoded (form), or every ASCII byte as \u00XX
 * (JSON; other bytes as they are, as the decoder keeps them); a letter's
 * capital where it has one */
static size_t respell(const char *name, const struct limit_account *a, int k, bool json, char *o)
{
    size_t n = 0;
    if (json)
        o[n++] = '{';
    for (int i = 0; i < k; i++) {
        for (int part = 0; part < 2; part++) {
            const char *p = part ? a[i].v : name;
            size_t len = part ? a[i].len : strlen(name);
            if (json)
                o[n++] = '"';
            for (size_t j = 0; j < len; j++) {
                unsigned char c = (unsigned char)p[j];
                if (part && c >= 'a' && c <= 'z')
                    c = (unsigned char)(c - 32);
                if (json && c >= 0x80) {
                    o[n++] = (char)c;
                } else if (json) {
                    memcpy(o + n, "\\u00", 4);
                    o[n + 4] = HEX[c >> 4];
                    o[n + 5] = HEX[c & 15];
                    n += 6;
                } else {
                    o[n++] = '%';
                    o[n++] = HEX[c >> 4];
                    o[n++] = HEX[c & 15];
                }
            }
            if (json)
                o[n++] = '"';
            o[n++] = json ? (part ? ',' : ':') : (part ? '&' : '=');
        }
    }
    if (json)
        o[n++] = '}';
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1, *end = (const char *)data + size;
    const char *nlp = memchr(s, '\n', (size_t)(end - s));
    if (!nlp)
        return 0;
    char name[33];
    size_t nn = (size_t)(nlp - s) < 32 ? (size_t)(nlp - s) : 32;
    memcpy(name, s, nn);
    name[nn] = '\0';
    /* the field or body, in a buffer of its own size (ASan sees overreads) */
    size_t n = (size_t)(end - nlp - 1);
    char *b = malloc(n ? n : 1);
    CHECK(b);
    memcpy(b, nlp + 1, n);

    const char *v = NULL, *w = NULL;
    size_t vl = 0, wl = 0;
    bool found, want;
    switch (data[0] % 3) {
    case 0:
        v = limit_cookie_value(b, n, name, &vl);
        found = v != NULL;
        want = ref_cookie(b, n, name, &w, &wl);
        if (found)
            CHECK(!memchr(v, ';', vl));
        break;
    default: {
        bool json = data[0] % 3 == 2;
        struct limit_account got[LIMIT_ACCOUNTS], ref[LIMIT_ACCOUNTS], again[LIMIT_ACCOUNTS];
        int k = limit_accounts(b, n, name, json ? LIMIT_ACCOUNT_JSON : LIMIT_ACCOUNT_FORM, got);
        check_accounts(got, k);
        if (!json) {
            int r = ref_form(b, n, name, ref);
            CHECK(r == k);
            for (int i = 0; i < k; i++)
                CHECK(ref[i].len == got[i].len && !memcmp(ref[i].v, got[i].v, got[i].len));
        }
        if (k > 0 && nn > 0 && !memchr(name, '\0', nn)) {
            char *o = malloc((size_t)k * (6 * (32 + LIMIT_ACCOUNT_MAX) + 8) + 2);
            CHECK(o);
            size_t on = respell(name, got, k, json, o);
            int k2 = limit_accounts(o, on, name, json ? LIMIT_ACCOUNT_JSON : LIMIT_ACCOUNT_FORM,
                                    again);
            CHECK(k2 == k);
            for (int i = 0; i < k; i++)
                CHECK(again[i].len == got[i].len && !memcmp(again[i].v, got[i].v, got[i].len));
            free(o);
        }
        free(b);
        return 0;
    }
    }
    if (found)
        CHECK(fz_within(b, n, v, vl));
    CHECK(found == want);
    if (found)
        CHECK(v == w && vl == wl);
    free(b);
    return 0;
}
