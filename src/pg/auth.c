/* pg/auth.c: SCRAM-SHA-256 (RFC 5802, RFC 7677) both ways and the md5
 * response, with OpenSSL. Passwords are used as given (no SASLprep): for
 * ASCII passwords that is what PostgreSQL does too. See pg.h. */
#include "pg.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The most PBKDF2 iterations portico will run for one login, from a
 * verifier or a server's challenge (PostgreSQL's default is 4096): a few
 * seconds of a worker's time, where a server asking for 999,999,999 would
 * stall every client of that worker for minutes. */
#define SCRAM_MAX_ITERATIONS 10000000

/* base64 into out (NUL-terminated); its length, or -1 if it does not fit. */
static int b64_enc(const uint8_t *in, size_t n, char *out, size_t outlen)
{
    if (outlen < 4 * ((n + 2) / 3) + 1)
        return -1;
    return EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/* Decode base64 (strict: length a multiple of 4); bytes written, or -1. */
static int b64_dec(const char *in, size_t n, uint8_t *out, size_t outlen)
{
    if (n == 0 || n % 4 || outlen < n / 4 * 3)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '/' || (c == '=' && i >= n - 2);
        if (!ok || (c != '=' && i > 0 && in[i - 1] == '='))
            return -1;
    }
    int r = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (r < 0)
        return -1;
    if (in[n - 1] == '=')
        r--;
    if (in[n - 2] == '=')
        r--;
    return r;
}

static void hmac(const uint8_t *key, size_t klen, const void *msg, size_t mlen, uint8_t out[32])
{
    unsigned int olen = 32;
    HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &olen);
}

static void sha256(const uint8_t *in, size_t n, uint8_t out[32])
{
    unsigned int olen = 32;
    EVP_Digest(in, n, out, &olen, EVP_sha256(), NULL);
}

static bool salted_password(const char *password, const uint8_t *salt, size_t salt_len,
                            uint32_t iter, uint8_t out[32])
{
    return PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)salt_len, (int)iter,
                             EVP_sha256(), 32, out) == 1;
}

bool pg_scram_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                            uint32_t iterations, struct pg_scram_secret *out)
{
    memset(out, 0, sizeof *out);
    if (!salt) {
        salt_len = 16;
        if (RAND_bytes(out->salt, 16) != 1)
            return false;
    } else {
        if (salt_len == 0 || salt_len > sizeof out->salt)
            return false;
        memcpy(out->salt, salt, salt_len);
    }
    out->salt_len = salt_len;
    out->iterations = iterations;
    uint8_t sp[32], ck[32];
    if (!salted_password(password, out->salt, salt_len, iterations, sp))
        return false;
    hmac(sp, 32, "Client Key", 10, ck);
    sha256(ck, 32, out->stored_key);
    hmac(sp, 32, "Server Key", 10, out->server_key);
    OPENSSL_cleanse(sp, sizeof sp);
    OPENSSL_cleanse(ck, sizeof ck);
    return true;
}

bool pg_scram_parse_secret(const char *s, struct pg_scram_secret *out)
{
    memset(out, 0, sizeof *out);
    if (strncmp(s, "SCRAM-SHA-256$", 14) != 0)
        return false;
    s += 14;
    char *end;
    unsigned long iter = strtoul(s, &end, 10);
    if (end == s || *end != ':' || iter == 0 || iter > SCRAM_MAX_ITERATIONS)
        return false;
    const char *salt = end + 1, *dollar = strchr(salt, '$');
    if (!dollar)
        return false;
    const char *stored = dollar + 1, *colon = strchr(stored, ':');
    if (!colon)
        return false;
    const char *server = colon + 1;
    uint8_t tmp[48];
    int n = b64_dec(salt, (size_t)(dollar - salt), out->salt, sizeof out->salt);
    if (n <= 0)
        return false;
    out->salt_len = (size_t)n;
    if (b64_dec(stored, (size_t)(colon - stored), tmp, sizeof tmp) != 32)
        return false;
    memcpy(out->stored_key, tmp, 32);
    if (b64_dec(server, strlen(server), tmp, sizeof tmp) != 32)
        return false;
    memcpy(out->server_key, tmp, 32);
    out->iterations = (uint32_t)iter;
    return true;
}

/* The value of attribute `a` ("r", "p", ...) in a comma-separated SCRAM
 * message, as [*v, *v + *vlen). */
static bool attr(const char *msg, size_t len, char a, const char **v, size_t *vlen)
{
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && msg[j] != ',')
            j++;
        if (j - i >= 2 && msg[i] == a && msg[i + 1] == '=') {
            *v = msg + i + 2;
            *vlen = j - i - 2;
            return true;
        }
        i = j + 1;
    }
    return false;
}

static bool random_nonce(char *out, size_t chars)
{
    uint8_t raw[48];
    size_t nraw = chars / 4 * 3;
    if (nraw > sizeof raw || RAND_bytes(raw, (int)nraw) != 1)
        return false;
    char tmp[80];
    if (b64_enc(raw, nraw, tmp, sizeof tmp) < 0)
        return false;
    /* ',' never occurs in base64; '=' cannot either since nraw % 3 == 0 */
    memcpy(out, tmp, chars);
    out[chars] = '\0';
    return true;
}

int pg_scram_server_first(struct pg_scram_server *s, const struct pg_scram_secret *secret,
                          const char *msg, size_t len, char *out, size_t outlen)
{
    memset(s, 0, sizeof *s);
    s->secret = *secret;
    /* gs2-header: "n,," or "y,," (we offer no channel binding); no authzid */
    if (len < 3 || (msg[0] != 'n' && msg[0] != 'y') || msg[1] != ',' || msg[2] != ',')
        return -1;
    const char *bare = msg + 3;
    size_t blen = len - 3;
    if (blen >= sizeof s->client_first_bare || memchr(bare, 0, blen))
        return -1;
    memcpy(s->client_first_bare, bare, blen);
    s->client_first_bare[blen] = '\0';
    const char *cn;
    size_t cnl;
    if (!attr(bare, blen, 'r', &cn, &cnl) || cnl == 0 || cnl > 64 || blen < 2 ||
        bare[0] != 'n' || bare[1] != '=')
        return -1;
    for (size_t i = 0; i < cnl; i++)
        if (cn[i] < 0x21 || cn[i] > 0x7e || cn[i] == ',')
            return -1;
    char sn[25];
    if (!random_nonce(sn, 24))
        return -1;
    snprintf(s->nonce, sizeof s->nonce, "%.*s%s", (int)cnl, cn, sn);
    char salt64[100];
    if (b64_enc(secret->salt, secret->salt_len, salt64, sizeof salt64) < 0)
        return -1;
    int n = snprintf(s->server_first, sizeof s->server_first, "r=%s,s=%s,i=%u", s->nonce,
                     salt64, secret->iterations);
    if (n < 0 || (size_t)n >= sizeof s->server_first || (size_t)n >= outlen)
        return -1;
    memcpy(out, s->server_first, (size_t)n + 1);
    s->state = 1;
    return n;
}

int pg_scram_server_final(struct pg_scram_server *s, const char *msg, size_t len,
                          char *out, size_t outlen)
{
    if (s->state != 1 || memchr(msg, 0, len))
        return -1;
    s->state = 2;
    const char *cb, *r, *p;
    size_t cbl, rl, pl;
    if (!attr(msg, len, 'c', &cb, &cbl) || !attr(msg, len, 'r', &r, &rl) ||
        !attr(msg, len, 'p', &p, &pl))
        return -1;
    if (!((cbl == 4 && !memcmp(cb, "biws", 4)) || (cbl == 4 && !memcmp(cb, "eSws", 4))))
        return -1;
    if (rl != strlen(s->nonce) || memcmp(r, s->nonce, rl) != 0)
        return -1;
    /* the proof is the last attribute: the message without it is signed */
    if (p < msg + 3 || p[-3] != ',' || p + pl != msg + len)
        return -1;
    size_t without = (size_t)(p - 3 - msg);
    uint8_t proof[48];
    if (b64_dec(p, pl, proof, sizeof proof) != 32)
        return -1;
    size_t am_len = strlen(s->client_first_bare) + 1 + strlen(s->server_first) + 1 + without;
    char *am = malloc(am_len + 1);
    if (!am)
        return -1;
    snprintf(am, am_len + 1, "%s,%s,%.*s", s->client_first_bare, s->server_first,
             (int)without, msg);
    uint8_t sig[32], ck[32], sk[32], ssig[32];
    hmac(s->secret.stored_key, 32, am, am_len, sig);
    for (int i = 0; i < 32; i++)
        ck[i] = proof[i] ^ sig[i];
    sha256(ck, 32, sk);
    hmac(s->secret.server_key, 32, am, am_len, ssig);
    free(am);
    if (CRYPTO_memcmp(sk, s->secret.stored_key, 32) != 0)
        return -2;
    memcpy(s->client_key, ck, 32);      /* proven: it logs in to servers with this verifier */
    OPENSSL_cleanse(ck, sizeof ck);
    char v[64];
    if (b64_enc(ssig, 32, v, sizeof v) < 0)
        return -1;
    int n = snprintf(out, outlen, "v=%s", v);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

int pg_scram_client_first(struct pg_scram_client *c, char *out, size_t outlen)
{
    memset(c, 0, sizeof *c);
    if (!random_nonce(c->nonce, 24))
        return -1;
    snprintf(c->client_first_bare, sizeof c->client_first_bare, "n=,r=%s", c->nonce);
    int n = snprintf(out, outlen, "n,,%s", c->client_first_bare);
    c->state = 1;
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

/* The server-first-message: its nonce (which must extend ours), salt and
 * iteration count. false when malformed. */
static bool parse_server_first(struct pg_scram_client *c, const char *server_first, size_t len,
                               const char **r, size_t *rl, uint8_t salt[64], int *saltn,
                               uint32_t *iter)
{
    if (c->state != 1 || memchr(server_first, 0, len) || len > 1024)
        return false;
    c->state = 2;
    const char *s, *i;
    size_t sl, il;
    if (!attr(server_first, len, 'r', r, rl) || !attr(server_first, len, 's', &s, &sl) ||
        !attr(server_first, len, 'i', &i, &il))
        return false;
    size_t nl = strlen(c->nonce);
    if (*rl <= nl || memcmp(*r, c->nonce, nl) != 0 || il == 0 || il > 9)
        return false;
    *iter = 0;
    for (size_t k = 0; k < il; k++) {
        if (i[k] < '0' || i[k] > '9')
            return false;
        *iter = *iter * 10 + (uint32_t)(i[k] - '0');
    }
    *saltn = b64_dec(s, sl, salt, 64);
    return *saltn > 0 && *iter > 0 && *iter <= SCRAM_MAX_ITERATIONS;
}

/* The client-final-message from ClientKey and ServerKey. */
static int client_final(struct pg_scram_client *c, const uint8_t ck[32], const uint8_t skey[32],
                        const char *r, size_t rl, const char *server_first, size_t len,
                        char *out, size_t outlen)
{
    uint8_t stored[32], sig[32], proof[32];
    sha256(ck, 32, stored);
    char without[256];
    int wl = snprintf(without, sizeof without, "c=biws,r=%.*s", (int)rl, r);
    if (wl < 0 || (size_t)wl >= sizeof without)
        return -1;
    size_t am_len = strlen(c->client_first_bare) + 1 + len + 1 + (size_t)wl;
    char *am = malloc(am_len + 1);
    if (!am)
        return -1;
    snprintf(am, am_len + 1, "%s,%.*s,%s", c->client_first_bare, (int)len, server_first, without);
    hmac(stored, 32, am, am_len, sig);
    hmac(skey, 32, am, am_len, c->server_signature);
    free(am);
    for (int k = 0; k < 32; k++)
        proof[k] = ck[k] ^ sig[k];
    char p64[64];
    if (b64_enc(proof, 32, p64, sizeof p64) < 0)
        return -1;
    int n = snprintf(out, outlen, "%s,p=%s", without, p64);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

int pg_scram_client_final(struct pg_scram_client *c, const char *password,
                          const char *server_first, size_t len, char *out, size_t outlen)
{
    const char *r;
    size_t rl;
    uint8_t salt[64], sp[32], ck[32], skey[32];
    int saltn;
    uint32_t iter;
    if (!parse_server_first(c, server_first, len, &r, &rl, salt, &saltn, &iter))
        return -1;
    if (!salted_password(password, salt, (size_t)saltn, iter, sp))
        return -1;
    hmac(sp, 32, "Client Key", 10, ck);
    hmac(sp, 32, "Server Key", 10, skey);
    OPENSSL_cleanse(sp, sizeof sp);
    int n = client_final(c, ck, skey, r, rl, server_first, len, out, outlen);
    OPENSSL_cleanse(ck, sizeof ck);
    return n;
}

int pg_scram_client_final_keys(struct pg_scram_client *c, const uint8_t client_key[32],
                               const uint8_t server_key[32], const char *server_first, size_t len,
                               char *out, size_t outlen)
{
    const char *r;
    size_t rl;
    uint8_t salt[64];
    int saltn;
    uint32_t iter;
    if (!parse_server_first(c, server_first, len, &r, &rl, salt, &saltn, &iter))
        return -1;
    return client_final(c, client_key, server_key, r, rl, server_first, len, out, outlen);
}

bool pg_scram_client_check(struct pg_scram_client *c, const char *server_final, size_t len)
{
    const char *v;
    size_t vl;
    uint8_t sig[48];
    if (c->state != 2 || !attr(server_final, len, 'v', &v, &vl))
        return false;
    if (b64_dec(v, vl, sig, sizeof sig) != 32 || CRYPTO_memcmp(sig, c->server_signature, 32) != 0)
        return false;
    c->state = 3;                       /* the server proved it knows the password */
    return true;
}

static void md5_hex(const void *in, size_t n, char out[33])
{
    uint8_t d[16];
    unsigned int dl = 16;
    EVP_Digest(in, n, d, &dl, EVP_md5(), NULL);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

void pg_md5_response(const char *secret, const char *user, const uint8_t salt[4], char out[36])
{
    char inner[33];
    if (!strncmp(secret, "md5", 3) && strlen(secret) == 35) {
        memcpy(inner, secret + 3, 32);
        inner[32] = '\0';
    } else {
        size_t pl = strlen(secret), ul = strlen(user);
        char *buf = malloc(pl + ul + 1);
        if (!buf) {
            out[0] = '\0';
            return;
        }
        memcpy(buf, secret, pl);
        memcpy(buf + pl, user, ul);
        md5_hex(buf, pl + ul, inner);
        OPENSSL_cleanse(buf, pl + ul);
        free(buf);
    }
    uint8_t tmp[36];
    memcpy(tmp, inner, 32);
    memcpy(tmp + 32, salt, 4);
    memcpy(out, "md5", 3);
    md5_hex(tmp, 36, out + 3);
}
