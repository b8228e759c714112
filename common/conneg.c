/*
 * conneg: Accept-Encoding and If-None-Match, read as RFC 9110 says.
 */
#include "conneg.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *skip_ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* The q of a member's parameters [p, end): 1 without one, 0 for a bad one. */
static double qvalue(const char *p, const char *end)
{
	while (p < end) {
		const char *semi = memchr(p, ';', (size_t)(end - p));
		const char *stop = semi != NULL ? semi : end;
		const char *name = skip_ows(p);

		if ((name[0] == 'q' || name[0] == 'Q') && name + 1 < stop) {
			const char *eq = skip_ows(name + 1);

			if (eq < stop && *eq == '=') {
				char *num_end;
				double q = strtod(skip_ows(eq + 1), &num_end);

				return num_end > eq + 1 && num_end <= stop && q > 0 && q <= 1 ? q :
												0;
			}
		}
		p = semi != NULL ? semi + 1 : end;
	}
	return 1;
}

int conneg_accepts_gzip(const char *ae)
{
	int gzip = -1, star = -1; /* -1: not named; else whether admitted */

	while (ae != NULL && *ae != '\0') {
		const char *end = ae + strcspn(ae, ",");
		const char *tok = skip_ows(ae), *semi = memchr(tok, ';', (size_t)(end - tok));
		const char *tend = semi != NULL ? semi : end;
		size_t tlen;

		while (tend > tok && (tend[-1] == ' ' || tend[-1] == '\t'))
			tend--;
		tlen = (size_t)(tend - tok);
		if ((tlen == 4 && strncasecmp(tok, "gzip", 4) == 0) ||
		    (tlen == 6 && strncasecmp(tok, "x-gzip", 6) == 0)) {
			int ok = semi == NULL || qvalue(semi + 1, end) > 0;

			gzip = gzip == 1 || ok;
		} else if (tlen == 1 && tok[0] == '*') {
			star = semi == NULL || qvalue(semi + 1, end) > 0;
		}
		ae = *end == ',' ? end + 1 : end;
	}
	return gzip >= 0 ? gzip : star == 1;
}

/* The opaque tag of an entity-tag at p (after any "W/"): *len bytes,
 * quotes included; *next is where the list goes on. */
static const char *opaque_tag(const char *p, size_t *len, const char **next)
{
	const char *end;

	if (*p == '"' && (end = strchr(p + 1, '"')) != NULL)
		end++;
	else
		end = p + strcspn(p, ", \t");
	*len = (size_t)(end - p);
	*next = end;
	return p;
}

int conneg_etag_matches(const char *inm, const char *etag)
{
	size_t elen;

	if (inm == NULL || etag == NULL)
		return 0;
	if (strncmp(etag, "W/", 2) == 0)
		etag += 2;
	elen = strlen(etag);
	while (*inm != '\0') {
		const char *tag;
		size_t n;

		while (*inm == ' ' || *inm == '\t' || *inm == ',')
			inm++;
		if (*inm == '\0')
			break;
		if (*inm == '*')
			return 1;
		if (strncmp(inm, "W/", 2) == 0)
			inm += 2;
		tag = opaque_tag(inm, &n, &inm);
		if (n == elen && n > 0 && memcmp(tag, etag, n) == 0)
			return 1;
		if (n == 0 && *inm != '\0')
			inm++; /* a stray byte: step over it */
	}
	return 0;
}
