/*
 * conneg: what a request's fields ask of a stored answer's form.
 *
 * Pure functions of field values, no I/O: whether Accept-Encoding admits
 * gzip (RFC 9110 12.5.3), and whether If-None-Match names an entity-tag
 * (the weak comparison of RFC 9110 8.8.3.2, as 13.1.2 asks for GET/HEAD).
 */
#ifndef KD_CONNEG_H
#define KD_CONNEG_H

/*
 * Whether an Accept-Encoding value (NULL: the field is absent) admits
 * gzip: "gzip" or "x-gzip" with q > 0, or "*" with q > 0 when gzip is not
 * named.  An explicit "gzip;q=0" refuses it whatever "*" says.
 */
int conneg_accepts_gzip(const char *accept_encoding);

/*
 * Whether an If-None-Match value (NULL: absent) names etag (NULL: the
 * answer has none): "*", or a listed entity-tag equal to etag once "W/" is
 * set aside on both.  Entity-tags are read as quoted strings, so a comma
 * inside one does not split it.
 */
int conneg_etag_matches(const char *if_none_match, const char *etag);

#endif
