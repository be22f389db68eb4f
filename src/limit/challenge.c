/* limit/challenge.c: the proof-of-work challenge (action: challenge, and
 * `challenge: true` on a route). A challenged client gets 429 with a small
 * self-contained page whose script finds a counter c such that
 * SHA-256(nonce ":" c) starts with `difficulty` zero bits and sends it to
 * /.well-known/portico-challenge; a right answer gets a signed, expiring
 * cookie (HMAC-SHA-256 with the configured key) bound to the client's
 * address or network, which exempts it from challenges and from the limits
 * with action: challenge until it expires. A client that runs no script
 * just sees 429. The nonce is an HMAC of the binding and the time, so
 * nothing is stored per challenge and a solution cannot be used elsewhere. */
#include "limit.h"

#include "conf/conf.h"
#include "proxy/stage.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char page_head[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<meta name=\"robots\" content=\"noindex\">\n"
    "<title>Checking your browser</title>\n"
    "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}\n"
    "progress{width:100%}</style></head>\n"
    "<body><main>\n"
    "<h1>Checking your browser</h1>\n"
    "<p id=\"msg\" role=\"status\" aria-live=\"polite\">This site gets more requests than usual from your network. Your browser is solving a short puzzle to show it is not an automated script; this takes a moment and needs no action from you.</p>\n"
    "<progress id=\"bar\" aria-label=\"Puzzle progress\"></progress>\n"
    "<noscript><p><strong>JavaScript is needed to pass this check.</strong> Enable it, or try again later.</p></noscript>\n"
    "</main>\n"
    "<script>\n"
    "\n";

static const char page_tail[] =
    "function sha256w(bytes) {\n"
    "  var K = [0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,\n"
    "    0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,\n"
    "    0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,\n"
    "    0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,\n"
    "    0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,\n"
    "    0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,\n"
    "    0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,\n"
    "    0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2];\n"
    "  var H = [0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19];\n"
    "  var l = bytes.length, n = ((l + 9 + 63) >> 6) << 6, m = new Uint8Array(n), w = new Uint32Array(64);\n"
    "  m.set(bytes); m[l] = 0x80;\n"
    "  var dv = new DataView(m.buffer); dv.setUint32(n - 4, l * 8);\n"
    "  for (var o = 0; o < n; o += 64) {\n"
    "    for (var i = 0; i < 16; i++) w[i] = dv.getUint32(o + i * 4);\n"
    "    for (i = 16; i < 64; i++) {\n"
    "      var x = w[i - 15], y = w[i - 2];\n"
    "      w[i] = (w[i - 16] + ((x >>> 7 | x << 25) ^ (x >>> 18 | x << 14) ^ (x >>> 3)) + w[i - 7] +\n"
    "              ((y >>> 17 | y << 15) ^ (y >>> 19 | y << 13) ^ (y >>> 10))) | 0;\n"
    "    }\n"
    "    var a = H[0], b = H[1], c = H[2], d = H[3], e = H[4], f = H[5], g = H[6], h = H[7];\n"
    "    for (i = 0; i < 64; i++) {\n"
    "      var t1 = (h + ((e >>> 6 | e << 26) ^ (e >>> 11 | e << 21) ^ (e >>> 25 | e << 7)) +\n"
    "                ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;\n"
    "      var t2 = (((a >>> 2 | a << 30) ^ (a >>> 13 | a << 19) ^ (a >>> 22 | a << 10)) +\n"
    "                ((a & b) ^ (a & c) ^ (b & c))) | 0;\n"
    "      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;\n"
    "    }\n"
    "    H[0] = (H[0] + a) | 0; H[1] = (H[1] + b) | 0; H[2] = (H[2] + c) | 0; H[3] = (H[3] + d) | 0;\n"
    "    H[4] = (H[4] + e) | 0; H[5] = (H[5] + f) | 0; H[6] = (H[6] + g) | 0; H[7] = (H[7] + h) | 0;\n"
    "  }\n"
    "  return H;\n"
    "}\n"
    "\n"
    "(function () {\n"
    "  var p = document.getElementById('cfg').dataset, d = +p.difficulty, enc = new TextEncoder();\n"
    "  function zeros(h) {\n"
    "    for (var i = 0, bits = 0; i < 8; i++) {\n"
    "      var x = h[i] >>> 0;\n"
    "      if (x === 0) { bits += 32; continue; }\n"
    "      return bits + Math.clz32(x);\n"
    "    }\n"
    "    return bits;\n"
    "  }\n"
    "  var c = 0;\n"
    "  function work() {\n"
    "    for (var k = 0; k < 4096; k++, c++)\n"
    "      if (zeros(sha256w(enc.encode(p.nonce + ':' + c))) >= d) {\n"
    "        document.getElementById('msg').textContent = 'Done. Loading the page.';\n"
    "        location.replace(p.verify + '?ts=' + p.ts + '&nonce=' + p.nonce + '&c=' + c +\n"
    "                         '&next=' + encodeURIComponent(p.next));\n"
    "        return;\n"
    "      }\n"
    "    setTimeout(work, 0);\n"
    "  }\n"
    "  work();\n"
    "})();\n"
    "</script>\n"
    "\n";

static unsigned char fallback_key[32];
static bool fallback_ready;

static const unsigned char *key_of(const struct conf_challenge *cc, size_t *len)
{
    if (cc->key_len) {
        *len = cc->key_len;
        return cc->key;
    }
    if (!fallback_ready) {      /* no key_file: one per process (passes end with it) */
        if (RAND_bytes(fallback_key, sizeof fallback_key) != 1)
            memset(fallback_key, 0x5a, sizeof fallback_key);
        fallback_ready = true;
    }
    *len = sizeof fallback_key;
    return fallback_key;
}

static void hmac_hex(const struct conf_challenge *cc, const char *msg, size_t n, char out[65])
{
    size_t kl;
    const unsigned char *k = key_of(cc, &kl);
    unsigned char md[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), k, (int)kl, (const unsigned char *)msg, n, md, &ml);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* What a pass is bound to: the client address, or its network. */
static size_t binding(struct stage_x *sx, const struct conf_challenge *cc, char *out, size_t cap)
{
    size_t n;
    const char *ip = stage_client_ip(sx, &n);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, ip, n);
    out[n] = '\0';
    if (cc->bind_network) {     /* a.b.c.d -> a.b.c, and an IPv6 address to its first 4 groups */
        char *cut = strchr(out, ':') ? NULL : strrchr(out, '.');
        if (strchr(out, ':')) {
            int groups = 0;
            for (char *p = out; *p; p++)
                if (*p == ':' && ++groups == 4) {
                    cut = p;
                    break;
                }
        }
        if (cut) {
            *cut = '\0';
            n = (size_t)(cut - out);
        }
    }
    return n;
}

static bool cookie(struct stage_x *sx, const char *name, const char **v, size_t *vl)
{
    const char *c;
    size_t cl, nl = strlen(name);
    if (!stage_request_header(sx, "Cookie", 6, &c, &cl))
        return false;
    for (size_t i = 0; i < cl;) {
        while (i < cl && (c[i] == ' ' || c[i] == ';'))
            i++;
        size_t s = i;
        while (i < cl && c[i] != ';')
            i++;
        if (i - s > nl && !memcmp(c + s, name, nl) && c[s + nl] == '=') {
            *v = c + s + nl + 1;
            *vl = i - s - nl - 1;
            return true;
        }
    }
    return false;
}

bool limit_pass_check(const struct conf_challenge *cc, const char *bind, const char *v, size_t vl,
                      long long now)
{
    if (vl < 66 || vl > 90)
        return false;
    const char *dot = memchr(v, '.', vl);
    if (!dot || (size_t)(v + vl - dot - 1) != 64)
        return false;
    char exp[24];
    size_t el = (size_t)(dot - v);
    if (el == 0 || el >= sizeof exp)
        return false;
    memcpy(exp, v, el);
    exp[el] = '\0';
    char *end;
    long long e = strtoll(exp, &end, 10);
    if (*end || exp[0] == '-' || exp[0] == '+' || e < now)
        return false;
    char msg[128], mac[65];
    int n = snprintf(msg, sizeof msg, "p|%s|%s", bind, exp);
    hmac_hex(cc, msg, (size_t)n, mac);
    return CRYPTO_memcmp(mac, dot + 1, 64) == 0;
}

size_t limit_pass_make(const struct conf_challenge *cc, const char *bind, long long exp, char *out,
                       size_t cap)
{
    char msg[128], mac[65];
    int n = snprintf(msg, sizeof msg, "p|%s|%lld", bind, exp);
    hmac_hex(cc, msg, (size_t)n, mac);
    n = snprintf(out, cap, "%lld.%s", exp, mac);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

bool limit_challenge_passed(struct stage_x *sx, const struct conf_challenge *cc)
{
    const char *v;
    size_t vl;
    char b[64];
    if (!cookie(sx, "portico_pass", &v, &vl))
        return false;
    binding(sx, cc, b, sizeof b);
    return limit_pass_check(cc, b, v, vl, (long long)time(NULL));
}

/* The challenge page for this client, with a nonce bound to it and now. */
int limit_challenge_page(struct stage_x *sx, const struct conf_challenge *cc)
{
    char b[64], msg[128], nonce[65];
    binding(sx, cc, b, sizeof b);
    long long ts = (long long)time(NULL);
    int n = snprintf(msg, sizeof msg, "n|%s|%lld", b, ts);
    hmac_hex(cc, msg, (size_t)n, nonce);
    nonce[32] = '\0';
    size_t pl;
    const char *path = stage_path(sx, &pl);
    char next[1024];
    size_t k = 0;
    for (size_t i = 0; i < pl && k + 7 < sizeof next; i++) {   /* HTML attribute-safe */
        unsigned char ch = (unsigned char)path[i];
        if (ch == '"' || ch == '<' || ch == '>' || ch == '&' || ch == '\'')
            k += (size_t)snprintf(next + k, sizeof next - k, "%%%02X", ch);
        else
            next[k++] = (char)ch;
    }
    next[k] = '\0';
    char cfg[1400];
    int cl = snprintf(cfg, sizeof cfg,
                      "</script><div id=\"cfg\" hidden data-difficulty=\"%u\" data-nonce=\"%s\" "
                      "data-ts=\"%lld\" data-next=\"%s\" "
                      "data-verify=\"/.well-known/portico-challenge\"></div><script>",
                      cc->difficulty, nonce, ts, next);
    static const char open_cfg[] = "/* */", end[] = "</body></html>\n";
    if (cl < 0 || (size_t)cl >= sizeof cfg)
        return -1;
    size_t total = sizeof page_head - 1 + sizeof open_cfg - 1 + (size_t)cl + sizeof page_tail - 1 +
                   sizeof end - 1;
    char *body = malloc(total);
    if (!body)
        return -1;
    size_t o = 0;
    memcpy(body + o, page_head, sizeof page_head - 1);
    o += sizeof page_head - 1;
    memcpy(body + o, open_cfg, sizeof open_cfg - 1);
    o += sizeof open_cfg - 1;
    memcpy(body + o, cfg, (size_t)cl);
    o += (size_t)cl;
    memcpy(body + o, page_tail, sizeof page_tail - 1);
    o += sizeof page_tail - 1;
    memcpy(body + o, end, sizeof end - 1);
    o += sizeof end - 1;
    struct stage_body *sb = stage_body_copy(body, o);
    free(body);
    struct stage_field f[] = {
        { "Content-Type", "text/html; charset=utf-8", 12, 24 },
        { "Cache-Control", "no-store", 13, 8 },
        { "Retry-After", "1", 11, 1 },
    };
    int rc = stage_answer(sx, 429, f, 3, sb);
    stage_body_unref(sb);
    return rc;
}

static bool query_param(const char *q, size_t ql, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < ql;) {
        size_t s = i;
        while (i < ql && q[i] != '&')
            i++;
        if (i - s > nl && !memcmp(q + s, name, nl) && q[s + nl] == '=') {
            *v = q + s + nl + 1;
            *vl = i - s - nl - 1;
            return true;
        }
        i++;
    }
    return false;
}

static int leading_zero_bits(const unsigned char *md)
{
    int bits = 0;
    for (int i = 0; i < 32; i++) {
        if (!md[i]) {
            bits += 8;
            continue;
        }
        for (int b = 7; b >= 0 && !(md[i] >> b & 1); b--)
            bits++;
        break;
    }
    return bits;
}

/* GET /.well-known/portico-challenge?ts=&nonce=&c=&next=: the answer. */
int limit_challenge_verify(struct stage_x *sx, const struct conf_challenge *cc)
{
    size_t pl;
    const char *path = stage_path(sx, &pl);
    const char *q = memchr(path, '?', pl);
    const char *ts, *nonce, *c, *next;
    size_t tsl, nl, cl, xl;
    bool ok = q && query_param(q + 1, (size_t)(path + pl - q - 1), "ts", &ts, &tsl) &&
              query_param(q + 1, (size_t)(path + pl - q - 1), "nonce", &nonce, &nl) &&
              query_param(q + 1, (size_t)(path + pl - q - 1), "c", &c, &cl) &&
              query_param(q + 1, (size_t)(path + pl - q - 1), "next", &next, &xl) &&
              tsl < 20 && nl == 32 && cl > 0 && cl < 20;
    char b[64], msg[160], want[65], tsz[24];
    if (ok) {
        memcpy(tsz, ts, tsl);
        tsz[tsl] = '\0';
        long long t = atoll(tsz), now = (long long)time(NULL);
        binding(sx, cc, b, sizeof b);
        int n = snprintf(msg, sizeof msg, "n|%s|%lld", b, t);
        hmac_hex(cc, msg, (size_t)n, want);
        ok = t <= now + 5 && now - t <= 600 && CRYPTO_memcmp(want, nonce, 32) == 0;
    }
    if (ok) {
        unsigned char md[32];
        char work[64];
        int wl = snprintf(work, sizeof work, "%.*s:%.*s", (int)nl, nonce, (int)cl, c);
        SHA256((const unsigned char *)work, (size_t)wl, md);
        ok = leading_zero_bits(md) >= (int)cc->difficulty;
    }
    static const char bad[] = "the challenge answer is wrong or too old: reload the page\n";
    if (!ok) {
        struct stage_body *sb = stage_body_copy(bad, sizeof bad - 1);
        struct stage_field f[] = { { "Content-Type", "text/plain", 12, 10 } };
        int rc = stage_answer(sx, 403, f, 1, sb);
        stage_body_unref(sb);
        return rc;
    }
    /* the pass: expiry and an HMAC of the binding and the expiry */
    long long exp = (long long)time(NULL) + (long long)(cc->ttl_ms / 1000);
    char pass[128], cookie_v[256], loc[1100];
    limit_pass_make(cc, b, exp, pass, sizeof pass);
    int cvl = snprintf(cookie_v, sizeof cookie_v,
                       "portico_pass=%s; Path=/; Max-Age=%llu; HttpOnly; SameSite=Lax", pass,
                       (unsigned long long)(cc->ttl_ms / 1000));
    /* back where the client was going: a path on this site only */
    size_t ll = 0;
    for (size_t i = 0; i < xl && ll + 1 < sizeof loc; i++) {
        if (next[i] == '%' && i + 2 < xl) {
            char hx[3] = { next[i + 1], next[i + 2], 0 };
            loc[ll++] = (char)strtol(hx, NULL, 16);
            i += 2;
        } else {
            loc[ll++] = next[i];
        }
    }
    loc[ll] = '\0';
    bool local = ll && loc[0] == '/' && (ll < 2 || (loc[1] != '/' && loc[1] != '\\'));
    for (size_t i = 0; local && i < ll; i++)
        local = (unsigned char)loc[i] > 0x20 && (unsigned char)loc[i] < 0x7f;
    struct stage_field f[] = {
        { "Set-Cookie", cookie_v, 10, (size_t)cvl },
        { "Location", local ? loc : "/", 8, local ? ll : 1 },
        { "Cache-Control", "no-store", 13, 8 },
    };
    return stage_answer(sx, 303, f, 3, NULL);
}
