/* admin/status_page.h: the HTML of the live status page (admin `GET /`).
 * Private to src/admin. */
#ifndef PORTICO_ADMIN_STATUS_PAGE_H
#define PORTICO_ADMIN_STATUS_PAGE_H

#include <stddef.h>

extern const char status_page_html[];
extern const size_t status_page_len;      /* strlen(status_page_html) */

#endif
