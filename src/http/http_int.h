/* http/http_int.h: what the files of http/ share: the token table and small
 * character helpers. Nothing outside http/ includes it. */
#ifndef PORTICO_HTTP_INT_H
#define PORTICO_HTTP_INT_H

#include "http.h"

#include <string.h>

extern const uint8_t http_tchar[256];
#define tchar http_tchar

/* field-vchar = VCHAR / obs-text, plus SP and HTAB inside a value. */
static inline bool is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

static inline int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    ch = lower(ch);
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

#endif
