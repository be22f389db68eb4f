/* core/fmt.h: number formatting for hot paths, without printf's machinery. */
#ifndef PORTICO_CORE_FMT_H
#define PORTICO_CORE_FMT_H

#include <stddef.h>
#include <stdint.h>

/* Write v in decimal at o (no terminator); returns the number of digits. */
static inline size_t fmt_u64(char *o, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        o[i] = tmp[n - 1 - i];
    return n;
}

#endif
