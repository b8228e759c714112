/*
 * reqcheck: the strict reading of a client request that libmicrohttpd
 * 0.9.75 does not do (it is lenient), without HTTP-server code: what the
 * daemon must refuse before anything is forwarded with the workspace token.
 *
 * Each check returns NULL when the input is acceptable, or a short reason
 * (a static string) for the 400 the daemon answers.
 */
#ifndef KD_REQCHECK_H
#define KD_REQCHECK_H

#include <stddef.h>

/* The request target: no control bytes or spaces (RFC 9112 3.2), and no
 * dot segment, literal or percent-encoded, in the path (RFC 3986 5.2.4):
 * "/programs/../record_views" would otherwise be cached as one family and
 * reach the API as another. */
const char *reqcheck_target(const char *target);

/* One header field: the name a token (RFC 9110 5.1), the value free of
 * CR, LF, NUL and other control bytes but HTAB (5.5). */
const char *reqcheck_field(const char *name, size_t name_len, const char *value, size_t value_len);

/* Content-Length values as they came, one per field line: all digits, and
 * equal when repeated (RFC 9110 8.6).  NULL or the reason. */
const char *reqcheck_content_length(const char *const *values, size_t n);

enum reqcheck_te {
	REQCHECK_TE_CHUNKED = 0, /* exactly "chunked" (any case), nothing around it: fine */
	REQCHECK_TE_BAD,         /* does not end in chunked: 400 (RFC 9112 6.3) */
	REQCHECK_TE_UNSUPPORTED, /* another coding before chunked: 501 */
};
/* A Transfer-Encoding value (the field lines joined with ", "). */
enum reqcheck_te reqcheck_transfer_encoding(const char *value);

#endif
