/*
 * hdr: an ordered list of HTTP header fields, and the proxy's rules for them.
 *
 * Used for the request headers forwarded upstream, the response headers
 * read back, and the header block stored with a cache entry.  Names keep
 * their case; lookups ignore it.  Values are kept byte for byte.
 */
#ifndef KD_HDR_H
#define KD_HDR_H

#include <stddef.h>

struct hdr;

struct hdr *hdr_new(void);
void hdr_free(struct hdr **h);

/* Appends a field; lengths let callers pass unterminated slices.  0, or -1 on
 * ENOMEM or a field that cannot be one header line: an empty name, a name
 * with a blank, CTL, non-ASCII byte or ':', or CR, LF or NUL in the value. */
int hdr_add(struct hdr *h, const char *name, size_t nlen, const char *value, size_t vlen);
/* Appends one raw "Name: value\r\n" line as curl delivers it (obs-fold not
 * supported: such a line is rejected).  Leading/trailing blanks of the value are
 * trimmed.  Returns 0, or -1 on a malformed line. */
int hdr_add_line(struct hdr *h, const char *line, size_t len);
/* Removes every field with that name; returns how many went. */
int hdr_remove(struct hdr *h, const char *name);
void hdr_clear(struct hdr *h);

size_t hdr_count(const struct hdr *h);
const char *hdr_name(const struct hdr *h, size_t i);
const char *hdr_value(const struct hdr *h, size_t i);
/* First value for name (case-insensitive), or NULL. */
const char *hdr_get(const struct hdr *h, const char *name);

/*
 * True when name must not cross the proxy (RFC 9110 section 7.6.1): Connection,
 * Keep-Alive, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE,
 * Trailer, Transfer-Encoding, Upgrade, and any field named in the
 * comma-separated Connection value (may be NULL).
 */
int hdr_is_hop_by_hop(const char *name, const char *connection);

/* Copies every end-to-end field of src into dst, skipping hop-by-hop ones
 * (using src's own Connection fields) and any name in the NULL-terminated
 * skip list.  0 or -1. */
int hdr_copy_end_to_end(struct hdr *dst, const struct hdr *src, const char *const *skip);

/*
 * Serialises to "Name: value\n" lines (malloc'd, NUL-terminated, *len set
 * without the NUL) and back.  Used for the cache file.  hdr_parse returns
 * NULL on malloc failure or a malformed block.
 */
char *hdr_serialize(const struct hdr *h, size_t *len);
struct hdr *hdr_parse(const char *text, size_t len);

#endif
