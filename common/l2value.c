/*
 * l2value: the shared cache's values.  See l2value.h.
 */
#include "l2value.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "entry.h"
#include "gz.h"

#define GEN_MAX 64
#define HEAD_MAX (2 * GEN_MAX + 160) /* the fields before the headers */

static int gen_ok(const char *g)
{
	return strlen(g) <= GEN_MAX && strchr(g, '|') == NULL;
}

char *l2v_encode(const char *fgen, const char *pgen, const struct entry *e, size_t max, size_t *len)
{
	size_t hlen, blen, zlen = 0;
	const char *h = entry_headers_text(e, &hlen);
	const void *body = entry_body(e, &blen), *gz = entry_gzip(e, &zlen);
	const void *out = gz != NULL ? gz : body;
	size_t olen = gz != NULL ? zlen : blen;
	char head[HEAD_MAX];
	int n;
	char *v;

	if (!gen_ok(fgen) || !gen_ok(pgen))
		return NULL;
	n = snprintf(head, sizeof(head), "%s|%s|%" PRId64 "|%" PRId64 "|%ld|%c|%zu|%zu|%zu|", fgen,
		     pgen, entry_expires_at(e), entry_stored_at(e), entry_status(e),
		     gz != NULL ? 'g' : 'i', hlen, blen, olen);
	if (n < 0 || (size_t)n >= sizeof(head))
		return NULL;
	if (hlen > max || olen > max - hlen || (size_t)n > max - hlen - olen)
		return NULL;
	*len = (size_t)n + hlen + olen;
	if ((v = malloc(*len)) == NULL)
		return NULL;
	memcpy(v, head, (size_t)n);
	memcpy(v + n, h, hlen);
	if (olen > 0)
		memcpy(v + n + hlen, out, olen);
	return v;
}

/* Skips a generation and its '|'; NULL when there is none (or it is
 * longer than any l2v_encode() writes). */
static const char *skip_gen(const char *p, const char *end)
{
	const char *bar;

	if (p == NULL)
		return NULL;
	bar = memchr(p, '|', (size_t)(end - p));
	return bar != NULL && bar - p <= GEN_MAX ? bar + 1 : NULL;
}

/* The next '|'-ended field as a decimal number (digits only: no sign, no
 * blanks), in *out; -1 when it is not one or is over lim. */
static int number(const char **p, const char *end, long long lim, long long *out)
{
	const char *q = *p;
	long long n = 0;

	if (q >= end || *q < '0' || *q > '9')
		return -1;
	for (; q < end && *q >= '0' && *q <= '9'; q++) {
		if (n > (lim - (*q - '0')) / 10)
			return -1;
		n = n * 10 + (*q - '0');
	}
	if (q >= end || *q != '|')
		return -1;
	*p = q + 1;
	*out = n;
	return 0;
}

struct entry *l2v_decode(const char *v, size_t len, size_t max_body, const char *key, int family,
			 const char *path)
{
	const char *end = v + len, *p = v;
	long long expires, stored, status, hlen, blen, zlen;
	struct entry_init in = { 0 };
	char enc;

	if ((p = skip_gen(skip_gen(p, end), end)) == NULL ||
	    number(&p, end, INT64_MAX, &expires) < 0 || number(&p, end, INT64_MAX, &stored) < 0 ||
	    number(&p, end, 999, &status) < 0 || status < 100 || end - p < 2 || p[1] != '|')
		return NULL;
	enc = p[0];
	p += 2;
	if ((enc != 'g' && enc != 'i') || number(&p, end, (long long)len, &hlen) < 0 ||
	    number(&p, end, max_body < INT32_MAX ? (long long)max_body : INT32_MAX, &blen) < 0 ||
	    number(&p, end, (long long)len, &zlen) < 0 ||
	    (size_t)(end - p) != (size_t)hlen + (size_t)zlen || (enc == 'i' && blen != zlen))
		return NULL;
	if (enc == 'g') {
		if (gz_decompress(p + hlen, (size_t)zlen, (size_t)blen, &in.body) < 0)
			return NULL;
		if ((in.gz = malloc((size_t)zlen)) == NULL) {
			free(in.body);
			return NULL;
		}
		memcpy(in.gz, p + hlen, (size_t)zlen);
		in.gz_len = (size_t)zlen;
	} else if ((in.body = malloc((size_t)blen + 1)) == NULL) {
		return NULL;
	} else {
		memcpy(in.body, p + hlen, (size_t)blen);
	}
	in.body_len = (size_t)blen;
	in.key = key;
	in.family = family;
	in.path = path;
	in.status = (long)status;
	in.headers = p;
	in.headers_len = (size_t)hlen;
	in.stored_at = stored;
	in.expires_at = expires;
	return entry_new(&in);
}
