/* pg/proto.c: PostgreSQL v3 message framing and the few message bodies the
 * pooler reads. Pure functions over byte ranges; nothing here allocates.
 * See pg.h for the contracts. */
#include "pg.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#define PG_PROTO_30 196608u
#define PG_CODE_CANCEL 80877102u
#define PG_CODE_SSL 80877103u
#define PG_CODE_GSSENC 80877104u

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

long pg_msg_next(const uint8_t *p, size_t n, uint32_t max, struct pg_msg *m)
{
    if (n < 5)
        return 0;
    uint32_t len = be32(p + 1);
    if (len < 4 || len - 4 > max)
        return -1;
    if (n - 5 < len - 4)
        return 0;
    m->type = (char)p[0];
    m->len = len - 4;
    m->body = p + 5;
    return (long)len + 1;
}

uint8_t pg_rd_u8(struct pg_rd *r)
{
    if (r->bad || r->n - r->off < 1) {
        r->bad = true;
        return 0;
    }
    return r->p[r->off++];
}

uint16_t pg_rd_u16(struct pg_rd *r)
{
    if (r->bad || r->n - r->off < 2) {
        r->bad = true;
        return 0;
    }
    uint16_t v = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
    r->off += 2;
    return v;
}

uint32_t pg_rd_u32(struct pg_rd *r)
{
    if (r->bad || r->n - r->off < 4) {
        r->bad = true;
        return 0;
    }
    uint32_t v = be32(r->p + r->off);
    r->off += 4;
    return v;
}

const char *pg_rd_str(struct pg_rd *r, size_t *len)
{
    if (r->bad)
        return NULL;
    const uint8_t *s = r->p + r->off;
    const uint8_t *z = memchr(s, 0, r->n - r->off);
    if (!z) {
        r->bad = true;
        return NULL;
    }
    if (len)
        *len = (size_t)(z - s);
    r->off += (size_t)(z - s) + 1;
    return (const char *)s;
}

const uint8_t *pg_rd_bytes(struct pg_rd *r, size_t n)
{
    if (r->bad || r->n - r->off < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *s = r->p + r->off;
    r->off += n;
    return s;
}

/* The name/value pairs of a startup packet (its body after the version). */
static bool startup_params(struct pg_startup *s, const uint8_t *p, size_t n, const char **reason)
{
    struct pg_rd r = pg_rd(p, n);
    for (;;) {
        size_t nl, vl;
        const char *name = pg_rd_str(&r, &nl);
        if (!name) {
            *reason = "unterminated startup packet";
            return false;
        }
        if (nl == 0)
            break;
        const char *value = pg_rd_str(&r, &vl);
        if (!value) {
            *reason = "startup parameter without a value";
            return false;
        }
        if (!strcmp(name, "user"))
            s->user = value;
        else if (!strcmp(name, "database"))
            s->database = value;
        else {
            if (s->nparams == PG_MAX_PARAMS) {
                *reason = "too many startup parameters";
                return false;
            }
            s->names[s->nparams] = name;
            s->values[s->nparams++] = value;
        }
    }
    if (r.off != r.n) {
        *reason = "bytes after the end of the startup packet";
        return false;
    }
    if (!s->user || !*s->user) {
        *reason = "no PostgreSQL user name specified in startup packet";
        return false;
    }
    if (!s->database || !*s->database)
        s->database = s->user;
    return true;
}

long pg_startup_parse(const uint8_t *p, size_t n, struct pg_startup *s, const char **reason)
{
    static const char *dummy;
    if (!reason)
        reason = &dummy;
    memset(s, 0, sizeof *s);
    if (n < 4)
        return 0;
    uint32_t len = be32(p);
    if (len < 8 || len > PG_MAX_STARTUP) {
        *reason = "invalid startup packet length";
        return -1;
    }
    if (n < 8)
        return 0;
    if (n < len)
        return 0;
    uint32_t code = be32(p + 4);
    if (code == PG_CODE_SSL || code == PG_CODE_GSSENC) {
        if (len != 8) {
            *reason = "invalid length of an encryption request";
            return -1;
        }
        s->kind = code == PG_CODE_SSL ? PG_SSL_REQUEST : PG_GSSENC_REQUEST;
        return 8;
    }
    if (code == PG_CODE_CANCEL) {
        if (len != 16) {
            *reason = "invalid length of a cancel request";
            return -1;
        }
        s->kind = PG_CANCEL_REQUEST;
        s->cancel_pid = be32(p + 8);
        s->cancel_key = be32(p + 12);
        return 16;
    }
    if (code >> 16 != 3) {
        *reason = "unsupported frontend protocol (portico speaks 3.0)";
        return -1;
    }
    s->kind = PG_STARTUP;
    s->version = code;
    if (!startup_params(s, p + 8, len - 8, reason))
        return -1;
    return (long)len;
}

/* Skip `count` strings; false if any is unterminated. */
static bool skip_strs(struct pg_rd *r, unsigned count)
{
    for (unsigned i = 0; i < count; i++)
        if (!pg_rd_str(r, NULL))
            return false;
    return true;
}

bool pg_client_msg_valid(const struct pg_msg *m)
{
    struct pg_rd r = pg_rd(m->body, m->len);
    switch (m->type) {
    case 'Q':   /* query string */
        skip_strs(&r, 1);
        break;
    case 'P': { /* name, query, int16 n, n x int32 */
        skip_strs(&r, 2);
        uint16_t np = pg_rd_u16(&r);
        pg_rd_bytes(&r, (size_t)np * 4);
        break;
    }
    case 'B': { /* portal, stmt, formats, params, result formats */
        skip_strs(&r, 2);
        uint16_t nf = pg_rd_u16(&r);
        pg_rd_bytes(&r, (size_t)nf * 2);
        uint16_t np = pg_rd_u16(&r);
        for (unsigned i = 0; i < np && !r.bad; i++) {
            uint32_t l = pg_rd_u32(&r);
            if (l != 0xffffffffu)
                pg_rd_bytes(&r, l);
        }
        uint16_t nr = pg_rd_u16(&r);
        pg_rd_bytes(&r, (size_t)nr * 2);
        break;
    }
    case 'D':
    case 'C': {
        uint8_t w = pg_rd_u8(&r);
        if (w != 'S' && w != 'P')
            return false;
        skip_strs(&r, 1);
        break;
    }
    case 'E':   /* portal, int32 max rows */
        skip_strs(&r, 1);
        pg_rd_u32(&r);
        break;
    case 'S':   /* Sync, Flush, Terminate, CopyDone: empty */
    case 'H':
    case 'X':
    case 'c':
        break;
    case 'd':   /* CopyData: anything */
        return true;
    case 'f':   /* CopyFail: message */
        skip_strs(&r, 1);
        break;
    case 'F': { /* function call: oid, formats, args, result format */
        pg_rd_u32(&r);
        uint16_t nf = pg_rd_u16(&r);
        pg_rd_bytes(&r, (size_t)nf * 2);
        uint16_t na = pg_rd_u16(&r);
        for (unsigned i = 0; i < na && !r.bad; i++) {
            uint32_t l = pg_rd_u32(&r);
            if (l != 0xffffffffu)
                pg_rd_bytes(&r, l);
        }
        pg_rd_u16(&r);
        break;
    }
    default:
        return false;
    }
    return !r.bad && r.off == r.n;
}

bool pg_parse_parse(const struct pg_msg *m, struct pg_parse *out)
{
    struct pg_rd r = pg_rd(m->body, m->len);
    out->name = pg_rd_str(&r, &out->name_len);
    out->query = pg_rd_str(&r, &out->query_len);
    if (r.bad)
        return false;
    out->rest = m->body + r.off;
    out->rest_len = m->len - r.off;
    uint16_t np = pg_rd_u16(&r);
    pg_rd_bytes(&r, (size_t)np * 4);
    return !r.bad && r.off == r.n;
}

bool pg_parse_bind(const struct pg_msg *m, size_t *stmt_off, size_t *stmt_len)
{
    struct pg_rd r = pg_rd(m->body, m->len);
    pg_rd_str(&r, NULL);
    *stmt_off = r.off;
    pg_rd_str(&r, stmt_len);
    return !r.bad;
}

bool pg_parse_target(const struct pg_msg *m, char *what, const char **name, size_t *name_len)
{
    struct pg_rd r = pg_rd(m->body, m->len);
    *what = (char)pg_rd_u8(&r);
    *name = pg_rd_str(&r, name_len);
    return !r.bad && (*what == 'S' || *what == 'P');
}

/* ---- a little SQL: SET / RESET / BEGIN READ ONLY ---- */

static size_t skip_space(const char *q, size_t len, size_t i)
{
    for (;;) {
        while (i < len && isspace((unsigned char)q[i]))
            i++;
        if (i + 1 < len && q[i] == '-' && q[i + 1] == '-') {     /* -- comment */
            while (i < len && q[i] != '\n')
                i++;
            continue;
        }
        if (i + 1 < len && q[i] == '/' && q[i + 1] == '*') {     /* block comment, not nested */
            size_t j = i + 2;
            while (j + 1 < len && !(q[j] == '*' && q[j + 1] == '/'))
                j++;
            if (j + 1 >= len)
                return len;
            i = j + 2;
            continue;
        }
        return i;
    }
}

/* The keyword at q[i] (case-insensitive, followed by a non-identifier byte). */
static bool keyword(const char *q, size_t len, size_t *i, const char *kw)
{
    size_t k = strlen(kw);
    if (len - *i < k || strncasecmp(q + *i, kw, k) != 0)
        return false;
    if (*i + k < len && (isalnum((unsigned char)q[*i + k]) || q[*i + k] == '_'))
        return false;
    *i = skip_space(q, len, *i + k);
    return true;
}

/* An identifier (a.b allowed, for custom settings); lowercased into name. */
static bool ident(const char *q, size_t len, size_t *i, char name[64])
{
    size_t n = 0, j = *i;
    if (j < len && q[j] == '"')
        return false;               /* quoted names are rare here: leave them alone */
    while (j < len && (isalnum((unsigned char)q[j]) || q[j] == '_' || q[j] == '.')) {
        if (n == 63)
            return false;
        name[n++] = (char)tolower((unsigned char)q[j++]);
    }
    if (n == 0 || isdigit((unsigned char)name[0]))
        return false;
    name[n] = '\0';
    *i = skip_space(q, len, j);
    return true;
}

bool pg_parse_set(const char *q, size_t len, struct pg_set *out)
{
    memset(out, 0, sizeof *out);
    while (len && (q[len - 1] == '\0'))
        len--;
    size_t i = skip_space(q, len, 0);
    if (keyword(q, len, &i, "RESET")) {
        out->reset = true;
        if (keyword(q, len, &i, "ALL"))
            out->reset_all = true;
        else if (!ident(q, len, &i, out->name))
            return false;
    } else if (keyword(q, len, &i, "SET")) {
        if (keyword(q, len, &i, "LOCAL"))
            return false;
        keyword(q, len, &i, "SESSION");
        if (keyword(q, len, &i, "TRANSACTION") || keyword(q, len, &i, "CHARACTERISTICS") ||
            keyword(q, len, &i, "ROLE") || keyword(q, len, &i, "AUTHORIZATION"))
            return false;       /* transaction scoped, or changes who we are: not replayed */
        if (keyword(q, len, &i, "TIME")) {
            if (!keyword(q, len, &i, "ZONE"))
                return false;
            strcpy(out->name, "timezone");
        } else {
            if (!ident(q, len, &i, out->name))
                return false;
            if (i < len && q[i] == '=')
                i = skip_space(q, len, i + 1);
            else if (!keyword(q, len, &i, "TO"))
                return false;
        }
        out->value = q + i;
    } else {
        return false;
    }
    /* the rest: one statement. A ';' inside quotes is part of a value. */
    size_t end = i;
    char quote = 0;
    for (; end < len; end++) {
        char ch = q[end];
        if (quote) {
            if (ch == quote)
                quote = 0;
        } else if (ch == '\'' || ch == '"') {
            quote = ch;
        } else if (ch == ';') {
            break;
        }
    }
    if (quote)
        return false;
    size_t stop = end;
    if (end < len) {                    /* only whitespace may follow the ';' */
        if (skip_space(q, len, end + 1) != len)
            return false;
    }
    while (stop > i && isspace((unsigned char)q[stop - 1]))
        stop--;
    if (out->reset) {
        return stop == i;
    }
    if (stop == i)
        return false;
    out->value_len = stop - i;
    return true;
}

bool pg_query_read_only(const char *q, size_t len)
{
    size_t i = skip_space(q, len, 0);
    if (keyword(q, len, &i, "BEGIN")) {
        if (!keyword(q, len, &i, "TRANSACTION"))
            keyword(q, len, &i, "WORK");
    } else if (keyword(q, len, &i, "START")) {
        if (!keyword(q, len, &i, "TRANSACTION"))
            return false;
    } else {
        return false;
    }
    /* modes, comma separated, in any order: look for READ ONLY among them */
    while (i < len) {
        if (keyword(q, len, &i, "READ")) {
            if (keyword(q, len, &i, "ONLY"))
                return true;
            continue;
        }
        i++;
    }
    return false;
}
