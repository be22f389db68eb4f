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
 * Invariants: the value found lies within the input; it is the first
 * occurrence the documented syntax gives (checked against a reference):
 *   cookie: pairs split on ';', spaces and ';' before a pair skipped, the
 *           first "NAME=" pair, its value up to the next ';';
 *   form:   the first "NAME=" at the start or after '&', up to the next '&';
 *   JSON:   the first "NAME" followed by ':' (JSON whitespace around it),
 *           whose value must then be a string: up to its closing quote (an
 *           escaped quote does not close it), or the end of an unterminated
 *           string; not found when the value is not a string or ends in a
 *           lone backslash.
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

static bool ref_form(const char *b, size_t n, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < n; i++) {
        if (i && b[i - 1] != '&')
            continue;
        if (n - i >= nl + 1 && !memcmp(b + i, name, nl) && b[i + nl] == '=') {
            size_t j = i + nl + 1;
            while (j < n && b[j] != '&')
                j++;
            *v = b + i + nl + 1;
            *vl = j - i - nl - 1;
            return true;
        }
    }
    return false;
}

static bool json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static bool ref_json(const char *b, size_t n, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl + 2 <= n; i++) {
        if (b[i] != '"' || memcmp(b + i + 1, name, nl) || b[i + nl + 1] != '"')
            continue;
        size_t j = i + nl + 2;
        while (j < n && json_ws(b[j]))
            j++;
        if (j >= n || b[j] != ':')
            continue;
        j++;
        while (j < n && json_ws(b[j]))
            j++;
        if (j >= n || b[j] != '"')
            return false;           /* the first NAME decides: not a string */
        size_t s = ++j;
        while (j < n && b[j] != '"') {
            if (b[j] == '\\' && j + 1 == n)
                return false;       /* a lone backslash at the end */
            j += b[j] == '\\' ? 2 : 1;
        }
        *v = b + s;
        *vl = j - s;
        return true;
    }
    return false;
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
    case 1:
        found = limit_body_field(b, n, name, false, &v, &vl);
        want = ref_form(b, n, name, &w, &wl);
        if (found)
            CHECK(!memchr(v, '&', vl));
        break;
    default:
        found = limit_body_field(b, n, name, true, &v, &vl);
        want = ref_json(b, n, name, &w, &wl);
        if (found) {            /* no unescaped quote inside */
            CHECK(v > b && v[-1] == '"');
            for (size_t i = 0; i < vl; i++) {
                CHECK(v[i] != '"');
                i += v[i] == '\\';
            }
        }
        break;
    }
    if (found)
        CHECK(fz_within(b, n, v, vl));
    CHECK(found == want);
    if (found)
        CHECK(v == w && vl == wl);
    free(b);
    return 0;
}
