/* tests/fuzz/fuzz_scram.c: the PostgreSQL pooler's authentication messages
 * (src/pg/auth.c): SCRAM-SHA-256 (RFC 5802, RFC 7677) on both sides, the
 * verifiers of the auth file and auth_query, and the md5 response.
 * fuzz_pgmsg covers the framing (src/pg/proto.c); this is what is inside
 * the SASL messages: a client's (before it has proved anything) and a
 * server's.
 *
 * Input: byte 0 picks the side (% 3), the rest is split into lines:
 *   0  portico checking a client: line 1 the client-first-message, line 2
 *      the client-final-message. In line 2 "{R}" becomes the nonce portico
 *      answered with, and a trailing ",p={P}" the right proof of what
 *      precedes it (",p={Q}": the same proof with one bit changed), so the
 *      fuzzer mutates around a valid exchange it could never compute.
 *   1  portico logging in to a server (with the keys a client proved):
 *      line 1 the server-first-message ("{R}": portico's nonce), line 2 the
 *      server-final-message ("{V}": the right signature, base64).
 *   2  line 1 a SCRAM verifier as an auth file holds one; line 1 and 2 also
 *      the md5 secret and user, the input's bytes 1-4 the salt.
 *
 * FUZZ_SCRAM_VERBOSE=1 says what each input got.
 *
 * The expected values are recomputed here with OpenSSL from RFC 5802's
 * definitions (AuthMessage, ClientKey, StoredKey, ClientProof,
 * ServerSignature) for the password "pencil". Invariants:
 *   - server-first is answered (with r=<client nonce + 24 base64 chars>,
 *     s=<salt>, i=<iterations>) exactly when the client-first-message is
 *     well formed (gs2 header n,, or y,,; n= first; r= of 1-64 printable
 *     characters);
 *   - client-final logs in only with the right proof for the exact
 *     AuthMessage, the right nonce and channel binding biws/eSws, answers
 *     v=<ServerSignature> and learns ClientKey; a well-formed message with
 *     the right proof always logs in, with another proof is refused (-2),
 *     a malformed one is -1; a second client-final is -1;
 *   - portico's client-final is, byte for byte, c=biws,r=<nonce>,p=<proof>
 *     for the server's nonce, and only when that nonce extends portico's and
 *     the iterations asked are 1..10^7;
 *     the server's signature is accepted only if it is the right one;
 *   - a verifier that parses has iterations 1..10^7 and a 1..64-byte salt,
 *     and written back canonically parses to the same;
 *   - the md5 response is "md5" + 32 hex digits, the one the definition
 *     gives.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "pg/pg.h"


#define ITER 16                 /* iterations of the verifier (cheap: fuzzing) */

static struct pg_scram_secret SEC;
static uint8_t CK[32], SK[32], STORED[32];      /* ClientKey, ServerKey, StoredKey */

/* ---------------------------------------------------------------- reference */

static size_t b64(const uint8_t *in, size_t n, char *out)
{
    return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static bool b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* Strict base64: a multiple of 4 characters, '=' only as padding at the
 * end; the bytes, or -1. */
static int unb64(const char *in, size_t n, uint8_t *out, size_t cap)
{
    if (n == 0 || n % 4 || n / 4 * 3 > cap)
        return -1;
    size_t pad = in[n - 1] == '=' ? (in[n - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < n - pad; i++)
        if (!b64_char(in[i]))
            return -1;
    int r = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    return r < 0 ? -1 : r - (int)pad;
}

static void hmac(const uint8_t *k, size_t kl, const void *m, size_t ml, uint8_t out[32])
{
    unsigned int ol = 32;
    HMAC(EVP_sha256(), k, (int)kl, m, ml, out, &ol);
}

/* The first attribute `a` ("a=...") of a comma-separated message. */
static bool attr(const char *m, size_t n, char a, const char **v, size_t *vl)
{
    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && m[j] != ',')
            j++;
        if (j - i >= 2 && m[i] == a && m[i + 1] == '=') {
            *v = m + i + 2;
            *vl = j - i - 2;
            return true;
        }
        i = j + 1;
    }
    return false;
}

/* ClientProof and ServerSignature for an AuthMessage. */
static void proof_of(const char *am, size_t n, uint8_t proof[32], uint8_t ssig[32])
{
    uint8_t sig[32];
    hmac(STORED, 32, am, n, sig);
    for (int i = 0; i < 32; i++)
        proof[i] = CK[i] ^ sig[i];
    hmac(SK, 32, am, n, ssig);
}

static void setup(void)
{
    static const uint8_t salt[16] = "fuzz_scram salt";
    CHECK(pg_scram_from_password("pencil", salt, sizeof salt, ITER, &SEC));
    uint8_t sp[32];
    CHECK(PKCS5_PBKDF2_HMAC("pencil", 6, salt, sizeof salt, ITER, EVP_sha256(), 32, sp) == 1);
    hmac(sp, 32, "Client Key", 10, CK);
    hmac(sp, 32, "Server Key", 10, SK);
    SHA256(CK, 32, STORED);
    CHECK(!memcmp(SEC.stored_key, STORED, 32) && !memcmp(SEC.server_key, SK, 32));
    CHECK(SEC.salt_len == 16 && SEC.iterations == ITER);
}


/* ---------------------------------------------------------------- portico as the server */

static bool first_well_formed(const char *m, size_t n, const char **cn, size_t *cnl)
{
    if (n < 3 || (m[0] != 'n' && m[0] != 'y') || m[1] != ',' || m[2] != ',')
        return false;
    const char *bare = m + 3;
    size_t bl = n - 3;
    if (bl >= 512 || memchr(bare, 0, bl) || bl < 2 || bare[0] != 'n' || bare[1] != '=')
        return false;
    if (!attr(bare, bl, 'r', cn, cnl) || *cnl == 0 || *cnl > 64)
        return false;
    for (size_t i = 0; i < *cnl; i++)
        if ((*cn)[i] < 0x21 || (*cn)[i] > 0x7e)
            return false;
    return true;
}

static void server_side(const char *l1, size_t n1, const char *l2, size_t n2, bool has2)
{
    struct pg_scram_server s;
    char out[512];
    const char *cn;
    size_t cnl;
    bool well = first_well_formed(l1, n1, &cn, &cnl);
    int rc = pg_scram_server_first(&s, &SEC, l1, n1, out, sizeof out);
    CHECK(well ? rc > 0 : rc == -1);
    if (rc < 0)
        return;
    /* r=<cn><24 base64>,s=<salt>,i=<iterations> */
    CHECK((size_t)rc == strlen(out) && !strcmp(out, s.server_first));
    CHECK(!strncmp(out, "r=", 2) && !memcmp(out + 2, cn, cnl));
    for (size_t i = 0; i < 24; i++)
        CHECK(b64_char(out[2 + cnl + i]));
    CHECK(strlen(s.nonce) == cnl + 24 && !memcmp(s.nonce, out + 2, cnl + 24));
    char salt64[100], want[512];
    b64(SEC.salt, SEC.salt_len, salt64);
    snprintf(want, sizeof want, ",s=%s,i=%u", salt64, ITER);
    CHECK(!strcmp(out + 2 + cnl + 24, want));
    if (!has2)
        return;

    /* the client-final-message, with the markers */
    char msg[2048];
    static const char *const mark[] = { "{R}" };
    const char *val[] = { s.nonce };
    size_t mn = fz_expand(l2, n2, msg, sizeof msg - 64, mark, val, 1);
    char bare[512];
    snprintf(bare, sizeof bare, "%.*s", (int)(n1 - 3), l1 + 3);
    const char *without = msg;
    size_t wl = mn;
    bool right = false, wrong = false;
    if (mn >= 6 && (!memcmp(msg + mn - 6, ",p={P}", 6) || !memcmp(msg + mn - 6, ",p={Q}", 6))) {
        wrong = msg[mn - 2] == 'Q';
        wl = mn - 6;
        char *am = malloc(strlen(bare) + strlen(s.server_first) + wl + 3);
        CHECK(am);
        int al = sprintf(am, "%s,%s,%.*s", bare, s.server_first, (int)wl, without);
        uint8_t proof[32], ssig[32];
        proof_of(am, (size_t)al, proof, ssig);
        free(am);
        proof[0] ^= wrong;
        mn = wl + 3 + b64(proof, 32, msg + wl + 3);
        right = !wrong;
    }

    /* as RFC 5802 has it: c=, r=, p= last; then the proof */
    const char *cb, *r, *p;
    size_t cbl, rl, pl;
    uint8_t got[48];
    bool shape = !memchr(msg, 0, mn) && attr(msg, mn, 'c', &cb, &cbl) &&
                 attr(msg, mn, 'r', &r, &rl) && attr(msg, mn, 'p', &p, &pl) &&
                 cbl == 4 && (!memcmp(cb, "biws", 4) || !memcmp(cb, "eSws", 4)) &&
                 rl == strlen(s.nonce) && !memcmp(r, s.nonce, rl) &&
                 p >= msg + 3 && p[-3] == ',' && p + pl == msg + mn &&
                 unb64(p, pl, got, sizeof got) == 32;
    uint8_t want_proof[32], ssig[32];
    size_t am_len = 0;
    if (shape) {
        wl = (size_t)(p - 3 - msg);
        char *am = malloc(strlen(bare) + strlen(s.server_first) + wl + 3);
        CHECK(am);
        am_len = (size_t)sprintf(am, "%s,%s,%.*s", bare, s.server_first, (int)wl, msg);
        proof_of(am, am_len, want_proof, ssig);
        free(am);
    }
    char fin[512];
    rc = pg_scram_server_final(&s, msg, mn, fin, sizeof fin);
    if (getenv("FUZZ_SCRAM_VERBOSE"))
        fprintf(stderr, "server: client-final %.*s -> %d\n", (int)mn, msg, rc);
    if (!shape) {
        CHECK(rc == -1);
        return;
    }
    bool proven = !memcmp(got, want_proof, 32);
    if (right)
        CHECK(proven);
    if (wrong)
        CHECK(!proven);
    if (!proven) {
        CHECK(rc == -2);
        return;
    }
    char v64[64];
    b64(ssig, 32, v64);
    snprintf(want, sizeof want, "v=%s", v64);
    CHECK(rc > 0 && (size_t)rc == strlen(want) && !strcmp(fin, want));
    CHECK(!memcmp(s.client_key, CK, 32));
    CHECK(pg_scram_server_final(&s, msg, mn, fin, sizeof fin) == -1);      /* once */
}

/* ---------------------------------------------------------------- portico as the client */

static void client_side(const char *l1, size_t n1, const char *l2, size_t n2, bool has2)
{
    struct pg_scram_client c;
    char first[200];
    int n = pg_scram_client_first(&c, first, sizeof first);
    CHECK(n == 3 + 5 + 24 && !strncmp(first, "n,,n=,r=", 8) && !strcmp(first + 3, c.client_first_bare));
    CHECK(strlen(c.nonce) == 24 && !memcmp(first + 8, c.nonce, 24));
    for (int i = 0; i < 24; i++)
        CHECK(b64_char(c.nonce[i]));

    char sf[2048];
    static const char *const mark[] = { "{R}" };
    const char *val[] = { c.nonce };
    size_t sn = fz_expand(l1, n1, sf, sizeof sf, mark, val, 1);

    /* the server-first-message as RFC 5802 has it */
    const char *r, *sv, *iv;
    size_t rl, sl, il;
    uint8_t salt[64];
    bool well = !memchr(sf, 0, sn) && sn <= 1024 && attr(sf, sn, 'r', &r, &rl) &&
                attr(sf, sn, 's', &sv, &sl) && attr(sf, sn, 'i', &iv, &il) && rl > 24 &&
                !memcmp(r, c.nonce, 24) && il > 0 && il <= 9 && unb64(sv, sl, salt, 64) > 0 &&
                9 + rl < 256;   /* "c=biws,r=<nonce>" in portico's 256 bytes */
    unsigned long iter = 0;
    for (size_t i = 0; well && i < il; i++) {
        well = iv[i] >= '0' && iv[i] <= '9';
        iter = iter * 10 + (unsigned long)(iv[i] - '0');
    }
    well = well && iter > 0 && iter <= 10000000;     /* portico's bound on a login's PBKDF2 */
    char fin[512];
    int rc = pg_scram_client_final_keys(&c, CK, SK, sf, sn, fin, sizeof fin);
    if (getenv("FUZZ_SCRAM_VERBOSE"))
        fprintf(stderr, "client: server-first %.*s -> %d\n", (int)sn, sf, rc);
    CHECK(well ? rc > 0 : rc == -1);
    if (rc < 0)
        return;
    char without[300];
    int wl = snprintf(without, sizeof without, "c=biws,r=%.*s", (int)rl, r);
    char *am = malloc(strlen(c.client_first_bare) + sn + (size_t)wl + 3);
    CHECK(am);
    int al = sprintf(am, "%s,%.*s,%s", c.client_first_bare, (int)sn, sf, without);
    uint8_t proof[32], ssig[32];
    proof_of(am, (size_t)al, proof, ssig);
    free(am);
    char p64[64], want[512];
    b64(proof, 32, p64);
    snprintf(want, sizeof want, "%s,p=%s", without, p64);
    CHECK((size_t)rc == strlen(want) && !strcmp(fin, want));
    if (!has2)
        return;

    /* the server's signature */
    char v64[64], sfin[2048];
    b64(ssig, 32, v64);
    static const char *const vmark[] = { "{V}" };
    const char *vval[] = { v64 };
    size_t fn = fz_expand(l2, n2, sfin, sizeof sfin, vmark, vval, 1);
    const char *v;
    size_t vl;
    uint8_t got[48];
    bool ok = pg_scram_client_check(&c, sfin, fn);
    if (getenv("FUZZ_SCRAM_VERBOSE"))
        fprintf(stderr, "client: server-final %.*s -> %s\n", (int)fn, sfin, ok ? "ok" : "refused");
    bool right = attr(sfin, fn, 'v', &v, &vl) && unb64(v, vl, got, sizeof got) == 32 &&
                 !memcmp(got, ssig, 32);
    CHECK(ok == right);
}

/* ---------------------------------------------------------------- stored secrets */

static void secrets(const char *l1, size_t n1, const char *l2, size_t n2, const uint8_t *data,
                    size_t size)
{
    char s[1024], u[256];
    snprintf(s, sizeof s, "%.*s", (int)n1, l1);
    snprintf(u, sizeof u, "%.*s", (int)n2, l2);
    struct pg_scram_secret sec;
    bool parsed = pg_scram_parse_secret(s, &sec);
    if (getenv("FUZZ_SCRAM_VERBOSE"))
        fprintf(stderr, "secret %s: %s\n", s, parsed ? "parsed" : "not a SCRAM verifier");
    if (parsed) {
        CHECK(sec.iterations >= 1 && sec.iterations <= 10000000);
        CHECK(sec.salt_len >= 1 && sec.salt_len <= sizeof sec.salt);
        char salt64[100], st64[64], sv64[64], canon[300];
        b64(sec.salt, sec.salt_len, salt64);
        b64(sec.stored_key, 32, st64);
        b64(sec.server_key, 32, sv64);
        snprintf(canon, sizeof canon, "SCRAM-SHA-256$%u:%s$%s:%s", sec.iterations, salt64, st64,
                 sv64);
        struct pg_scram_secret again;
        CHECK(pg_scram_parse_secret(canon, &again));
        CHECK(again.iterations == sec.iterations && again.salt_len == sec.salt_len &&
              !memcmp(again.salt, sec.salt, sec.salt_len) &&
              !memcmp(again.stored_key, sec.stored_key, 32) &&
              !memcmp(again.server_key, sec.server_key, 32));
    }

    /* md5: "md5" + md5(inner + salt), inner the stored hash's hex or md5(password + user) */
    uint8_t salt[4] = { 0 };
    memcpy(salt, data + 1, size - 1 < 4 ? size - 1 : 4);
    char out[36];
    memset(out, 0x5a, sizeof out);
    pg_md5_response(s, u, salt, out);
    CHECK(out[35] == '\0' && strlen(out) == 35 && !strncmp(out, "md5", 3));
    CHECK(strspn(out + 3, "0123456789abcdef") == 32);
    char inner[33], buf[1300];
    uint8_t d[16];
    unsigned int dl = 16;
    if (!strncmp(s, "md5", 3) && strlen(s) == 35) {
        memcpy(inner, s + 3, 32);
    } else {
        int bl = snprintf(buf, sizeof buf, "%s%s", s, u);
        EVP_Digest(buf, (size_t)bl, d, &dl, EVP_md5(), NULL);
        for (int i = 0; i < 16; i++)
            snprintf(inner + 2 * i, 3, "%02x", d[i]);
    }
    memcpy(buf, inner, 32);
    memcpy(buf + 32, salt, 4);
    EVP_Digest(buf, 36, d, &dl, EVP_md5(), NULL);
    char want[36] = "md5";
    for (int i = 0; i < 16; i++)
        snprintf(want + 3 + 2 * i, 3, "%02x", d[i]);
    CHECK(!strcmp(out, want));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1, *end = (const char *)data + size;
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    const char *l1 = s, *l2 = nl ? nl + 1 : end;
    size_t n1 = (size_t)((nl ? nl : end) - s), n2 = (size_t)(end - l2);
    switch (data[0] % 3) {
    case 0:
        server_side(l1, n1, l2, n2, nl != NULL);
        break;
    case 1:
        client_side(l1, n1, l2, n2, nl != NULL);
        break;
    default:
        secrets(l1, n1, l2, n2, data, size);
        break;
    }
    return 0;
}
