/* tests/fuzz/fuzz_logline.c: the parts of the access and audit logs that read
 * client input: the Basic-auth user name decoder and the JSON escaping of
 * every field. Invariants: the user name never includes the ':' or anything
 * after it; every line written is one line of JSON string syntax (no raw
 * control byte, no unescaped quote), whatever the bytes. Lines go to /dev/null through the
 * real writer thread. */
#include "fuzz_common.h"
#include "obs/obs.h"

static struct obs_alog *devnull;

/* Check that [p, p+n) is a JSON line of our shape: strings properly escaped. */
static void check_line(const char *p, size_t n)
{
    CHECK(n > 2 && p[0] == '{' && p[n - 1] == '\n' && p[n - 2] == '}');
    int in = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        unsigned char c = (unsigned char)p[i];
        CHECK(c >= 0x20 && c != 0x7f);          /* controls are \u-escaped; UTF-8 stays */
        if (!in) {
            in = c == '"';
            continue;
        }
        if (c == '\\') {
            unsigned char d = (unsigned char)p[++i];
            CHECK(d == '"' || d == '\\' || d == 'u');
            if (d == 'u') {
                CHECK(i + 4 < n && p[i + 1] == '0' && p[i + 2] == '0');
                i += 4;
            }
        } else if (c == '"') {
            in = 0;
        }
    }
    CHECK(!in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!devnull) {
        char err[256];
        devnull = obs_alog_open("/dev/null", err, sizeof err);
        CHECK(devnull);
    }
    const char *s = (const char *)data;

    /* the user name: prefix of the decoded bytes, before the first ':' */
    char user[16];
    size_t n = obs_basic_user(s, size, user, sizeof user);
    CHECK(n <= 4096);
    for (size_t i = 0; i < n && i < sizeof user; i++)
        CHECK(user[i] != ':');

    /* every field from the input, escaped */
    struct obs_alog_buf b;
    obs_alog_buf_init(&b, devnull);
    size_t half = size / 2;
    struct obs_audit_entry e = {
        .request_id = s, .request_id_len = half, .client = "127.0.0.1",
        .forwarded_for = s + half, .forwarded_for_len = size - half,
        .user = n ? user : NULL, .user_len = n < sizeof user ? n : sizeof user,
        .user_agent = s, .user_agent_len = size, .host = s, .host_len = half,
        .method = s, .method_len = size < 8 ? size : 8, .path = s, .path_len = size,
        .route = "/", .upstream = "app", .server = NULL, .status = 200,
    };
    obs_audit_write(&b, &e);
    CHECK(b.len > 0);
    check_line(b.data, b.len);
    size_t first = b.len;
    struct obs_alog_entry a = {
        .request_id = s, .request_id_len = half, .client = "::1", .method = s,
        .method_len = size < 8 ? size : 8, .path = s + half, .path_len = size - half,
        .route = "/", .upstream = NULL, .server = NULL, .status = 499,
    };
    obs_alog_write(&b, &a);
    check_line(b.data + first, b.len - first);
    obs_alog_flush(&b);
    obs_alog_buf_free(&b);
    return 0;
}
