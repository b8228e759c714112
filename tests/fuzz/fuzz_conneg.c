/*
 * fuzz_conneg: the request fields that pick an answer's form,
 * conneg_accepts_gzip() (Accept-Encoding) and conneg_etag_matches()
 * (If-None-Match against the stored ETag), as daemon/front.c and
 * daemon/deliver.c hand them a client's field values.
 *
 * Input: NUL-separated Accept-Encoding, If-None-Match and ETag (a missing
 * part is an absent field).
 *
 * Invariants:
 *  - an Accept-Encoding that names neither gzip nor "*" never admits gzip;
 *  - appending a member that is neither gzip nor "*" (", br") changes
 *    nothing, and neither does a member naming gzip with q=0 when gzip is
 *    named with q > 0 already, nor does the field's absence differ from "";
 *  - appending ", gzip" to any Accept-Encoding admits gzip unless the field
 *    already refuses it explicitly... which "gzip" itself then overrides:
 *    so "X, gzip" always admits it;
 *  - an If-None-Match of "*" matches any ETag;
 *  - for a well-formed ETag (W/ and a quoted string without quotes
 *    inside): If-None-Match listing it matches, with or without W/, and
 *    appending another tag to a well-formed If-None-Match changes nothing.
 */
#include <strings.h>

#include "conneg.h"
#include "fuzz.h"

static char *joined(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = fuzz_xmalloc(la + lb + 1);

	memcpy(s, a, la);
	memcpy(s + la, b, lb + 1);
	return s;
}

/* Whether s is a well-formed If-None-Match: "*", or entity-tags (W/ and a
 * quoted string without quotes inside) separated by commas and blanks. */
static int wellformed_list(const char *s)
{
	const char *close;

	while (*s == ' ' || *s == '\t' || *s == ',')
		s++;
	if (strcmp(s, "*") == 0)
		return 1;
	while (*s != '\0') {
		if (strncmp(s, "W/", 2) == 0)
			s += 2;
		if (*s != '"' || (close = strchr(s + 1, '"')) == NULL)
			return 0;
		s = close + 1;
		if (*s != '\0' && *s != ' ' && *s != '\t' && *s != ',')
			return 0;
		while (*s == ' ' || *s == '\t' || *s == ',')
			s++;
	}
	return 1;
}

static void check_ae(const char *ae)
{
	int got = conneg_accepts_gzip(ae);
	char *more;

	FUZZ_CHECK(got == 0 || got == 1, "result %d", got);
	if (ae == NULL) {
		FUZZ_CHECK(got == conneg_accepts_gzip(""), "absent and empty differ");
		return;
	}
	if (strcasestr(ae, "gzip") == NULL && strchr(ae, '*') == NULL)
		FUZZ_CHECK(!got, "gzip admitted by \"%s\"", ae);
	more = joined(ae, ", br");
	FUZZ_CHECK(conneg_accepts_gzip(more) == got, "\", br\" changed \"%s\"", ae);
	free(more);
	more = joined(ae, ", gzip");
	FUZZ_CHECK(conneg_accepts_gzip(more), "\"%s, gzip\" refuses gzip", ae);
	free(more);
}

/* An entity-tag as RFC 9110 8.8.3 writes it: optional W/, a quoted
 * string without quotes inside. */
static const char *opaque(const char *etag)
{
	const char *t = strncmp(etag, "W/", 2) == 0 ? etag + 2 : etag;
	size_t n = strlen(t);

	return n >= 2 && t[0] == '"' && t[n - 1] == '"' && memchr(t + 1, '"', n - 2) == NULL ? t :
											       NULL;
}

static void check_inm(const char *inm, const char *etag)
{
	int got = conneg_etag_matches(inm, etag);
	const char *t;
	char *more;

	FUZZ_CHECK(got == 0 || got == 1, "result %d", got);
	if (etag == NULL) {
		FUZZ_CHECK(!got, "a match without an ETag");
		return;
	}
	FUZZ_CHECK(conneg_etag_matches("*", etag), "* does not match \"%s\"", etag);
	if ((t = opaque(etag)) == NULL)
		return; /* a malformed stored ETag: no promise but no crash */
	FUZZ_CHECK(conneg_etag_matches(t, etag), "\"%s\" does not match itself", etag);
	more = joined("W/", t);
	FUZZ_CHECK(conneg_etag_matches(more, etag), "W/ lost \"%s\"", etag);
	free(more);
	/* (In a malformed list a stray quote would pair with the new tag's.) */
	if (inm != NULL && wellformed_list(inm) && strcmp(t, "\"zz\"") != 0) {
		more = joined(inm, ", \"zz\"");
		FUZZ_CHECK(conneg_etag_matches(more, etag) == got,
			   "an unrelated tag changed \"%s\" against \"%s\"", inm, etag);
		free(more);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *ae = fuzz_part(data, size, 0);
	char *inm = fuzz_part(data, size, 1);
	char *etag = fuzz_part(data, size, 2);

	check_ae(ae);
	check_inm(inm, etag);
	free(ae);
	free(inm);
	free(etag);
	return 0;
}
