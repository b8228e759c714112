/*
 * deliver: responses built from stored entries (see deliver.h).
 */
#include "deliver.h"

#include <microhttpd.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "entry.h"
#include "hdr.h"

/* The stored fields, adjusted for the form sent: a gzip copy makes the
 * answer vary on Accept-Encoding, and its ETag weak (RFC 9110 8.8.1: the
 * two forms are not byte-identical).  only (NULL: all) limits the fields. */
static void add_fields(struct MHD_Response *resp, struct entry *e, int gz, const char *const *only)
{
	const struct hdr *h = entry_headers(e);
	const char *vary = hdr_get(h, "Vary");
	int has_gz = entry_gzip(e, &(size_t){ 0 }) != NULL;
	char buf[1024];

	for (size_t i = 0; i < hdr_count(h); i++) {
		const char *n = hdr_name(h, i), *v = hdr_value(h, i);
		int keep = only == NULL;

		for (int k = 0; only != NULL && only[k] != NULL; k++)
			keep |= strcasecmp(n, only[k]) == 0;
		/* Age: ours, which adds the time stored to the API's. */
		if (!keep || strcasecmp(n, "Age") == 0 || (has_gz && strcasecmp(n, "Vary") == 0))
			continue;
		if (gz && strcasecmp(n, "ETag") == 0 && strncmp(v, "W/", 2) != 0) {
			snprintf(buf, sizeof(buf), "W/%s", v);
			v = buf;
		}
		MHD_add_response_header(resp, n, v);
	}
	if (has_gz) {
		if (vary == NULL || strcasestr(vary, "accept-encoding") != NULL)
			snprintf(buf, sizeof(buf), "%s", vary != NULL ? vary : "Accept-Encoding");
		else
			snprintf(buf, sizeof(buf), "%s, Accept-Encoding", vary);
		MHD_add_response_header(resp, "Vary", buf);
	}
}

struct MHD_Response *deliver_response(struct entry *e, int gzip, const char *xcache, int64_t now)
{
	int gz = gzip && entry_gzip(e, &(size_t){ 0 }) != NULL;
	int64_t age = (int64_t)entry_upstream_age(e) + (now - entry_stored_at(e));
	struct MHD_Response *resp;
	const void *data;
	size_t len;
	void *ref;
	char num[32];

	data = entry_body_ref(e, gz, &len, &ref);
	resp = MHD_create_response_from_buffer_with_free_callback_cls(len, (void *)data,
								      entry_body_release, ref);
	if (resp == NULL) {
		entry_body_release(ref);
		return NULL;
	}
	add_fields(resp, e, gz, NULL);
	snprintf(num, sizeof(num), "%lld", (long long)(age > 0 ? age : 0));
	MHD_add_response_header(resp, "Age", num);
	if (gz)
		MHD_add_response_header(resp, "Content-Encoding", "gzip");
	if (xcache != NULL)
		MHD_add_response_header(resp, "X-Cache", xcache);
	return resp;
}

struct MHD_Response *deliver_not_modified(struct entry *e, int gzip, const char *xcache)
{
	static const char *const keep[] = { "ETag",    "Last-Modified",    "Cache-Control",
					    "Expires", "Content-Location", "Vary",
					    NULL };
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);

	if (resp == NULL)
		return NULL;
	add_fields(resp, e, gzip && entry_gzip(e, &(size_t){ 0 }) != NULL, keep);
	if (xcache != NULL)
		MHD_add_response_header(resp, "X-Cache", xcache);
	return resp;
}
