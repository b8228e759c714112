/*
 * hdr: an ordered list of HTTP header fields, and the proxy's rules for them.
 *
 * A proxy must forward end-to-end fields untouched and drop hop-by-hop ones,
 * and the cache stores the upstream's fields as text; this module keeps both
 * rules in one place.  Fields are kept in arrival order as malloc'd name and
 * value strings.  A name or value that could break a header line (CR, LF,
 * NUL, or a colon or blank in a name) is refused on the way in, so the
 * serialised form is always one field per line and parses back unchanged.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hdr.h"

struct field {
	char *name;
	char *value;
};

struct hdr {
	struct field *f;
	size_t n;
	size_t cap;
};

/* Fields that describe one connection, never the message (RFC 9110 7.6.1). */
static const char *const hop_by_hop[] = {
	"Connection",
	"Keep-Alive",
	"Proxy-Connection",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"TE",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
	NULL,
};

struct hdr *hdr_new(void)
{
	return calloc(1, sizeof(struct hdr));
}

void hdr_clear(struct hdr *h)
{
	for (size_t i = 0; i < h->n; i++) {
		free(h->f[i].name);
		free(h->f[i].value);
	}
	h->n = 0;
}

void hdr_free(struct hdr **h)
{
	if (h == NULL || *h == NULL)
		return;
	hdr_clear(*h);
	free((*h)->f);
	free(*h);
	*h = NULL;
}

/* A field name is visible ASCII without ':' (a superset of RFC 9110's token
 * that still keeps "Name: value" lines unambiguous). */
static int name_ok(const char *name, size_t nlen)
{
	if (nlen == 0)
		return 0;
	for (size_t i = 0; i < nlen; i++) {
		unsigned char ch = (unsigned char)name[i];

		if (ch <= 0x20 || ch >= 0x7f || ch == ':')
			return 0;
	}
	return 1;
}

/* CR, LF and NUL would end or split the line; everything else is kept. */
static int value_ok(const char *value, size_t vlen)
{
	for (size_t i = 0; i < vlen; i++)
		if (value[i] == '\r' || value[i] == '\n' || value[i] == '\0')
			return 0;
	return 1;
}

static char *dup_slice(const char *s, size_t len)
{
	char *p = malloc(len + 1);

	if (p == NULL)
		return NULL;
	if (len > 0)
		memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

int hdr_add(struct hdr *h, const char *name, size_t nlen, const char *value, size_t vlen)
{
	char *n = NULL, *v = NULL;

	if (!name_ok(name, nlen) || !value_ok(value, vlen))
		return -1;
	if (h->n == h->cap) {
		size_t ncap = h->cap ? h->cap * 2 : 16;
		struct field *nf = realloc(h->f, ncap * sizeof(*nf));

		if (nf == NULL)
			goto fail;
		h->f = nf;
		h->cap = ncap;
	}
	if ((n = dup_slice(name, nlen)) == NULL || (v = dup_slice(value, vlen)) == NULL)
		goto fail;
	h->f[h->n].name = n;
	h->f[h->n].value = v;
	h->n++;
	return 0;
fail:
	free(n);
	free(v);
	return -1;
}

static int is_ows(char ch)
{
	return ch == ' ' || ch == '\t';
}

int hdr_add_line(struct hdr *h, const char *line, size_t len)
{
	const char *colon, *v, *end;

	/* curl hands over the line terminator; one CRLF or a bare LF. */
	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	/* Status lines, the blank end-of-headers line and obs-fold land here. */
	if (len == 0 || is_ows(line[0]))
		return -1;
	colon = memchr(line, ':', len);
	if (colon == NULL)
		return -1;
	end = line + len;
	v = colon + 1;
	while (v < end && is_ows(*v))
		v++;
	while (end > v && is_ows(end[-1]))
		end--;
	/* hdr_add refuses blanks before the colon (RFC 9112 5.1) and stray CR/LF. */
	return hdr_add(h, line, (size_t)(colon - line), v, (size_t)(end - v));
}

int hdr_remove(struct hdr *h, const char *name)
{
	size_t j = 0;
	int removed = 0;

	for (size_t i = 0; i < h->n; i++) {
		if (strcasecmp(h->f[i].name, name) == 0) {
			free(h->f[i].name);
			free(h->f[i].value);
			removed++;
		} else {
			h->f[j++] = h->f[i];
		}
	}
	h->n = j;
	return removed;
}

size_t hdr_count(const struct hdr *h)
{
	return h->n;
}

const char *hdr_name(const struct hdr *h, size_t i)
{
	assert(i < h->n);
	return h->f[i].name;
}

const char *hdr_value(const struct hdr *h, size_t i)
{
	assert(i < h->n);
	return h->f[i].value;
}

const char *hdr_get(const struct hdr *h, const char *name)
{
	for (size_t i = 0; i < h->n; i++)
		if (strcasecmp(h->f[i].name, name) == 0)
			return h->f[i].value;
	return NULL;
}

/* True when name is one of the comma-separated tokens of list (OWS allowed
 * around each, empty elements skipped, case ignored). */
static int in_list(const char *name, const char *list)
{
	size_t nlen = strlen(name);
	const char *p = list;

	while (*p != '\0') {
		const char *tok, *end;

		while (*p == ',' || is_ows(*p))
			p++;
		tok = p;
		while (*p != '\0' && *p != ',')
			p++;
		end = p;
		while (end > tok && is_ows(end[-1]))
			end--;
		if ((size_t)(end - tok) == nlen && nlen > 0 && strncasecmp(tok, name, nlen) == 0)
			return 1;
	}
	return 0;
}

int hdr_is_hop_by_hop(const char *name, const char *connection)
{
	for (size_t i = 0; hop_by_hop[i] != NULL; i++)
		if (strcasecmp(name, hop_by_hop[i]) == 0)
			return 1;
	return connection != NULL && in_list(name, connection);
}

/* Whether any Connection field of h names this field. */
static int named_by_connection(const struct hdr *h, const char *name)
{
	for (size_t i = 0; i < h->n; i++)
		if (strcasecmp(h->f[i].name, "Connection") == 0 && in_list(name, h->f[i].value))
			return 1;
	return 0;
}

static int in_skip(const char *name, const char *const *skip)
{
	for (; skip != NULL && *skip != NULL; skip++)
		if (strcasecmp(name, *skip) == 0)
			return 1;
	return 0;
}

/* On failure dst is left as it was. */
int hdr_copy_end_to_end(struct hdr *dst, const struct hdr *src, const char *const *skip)
{
	size_t had = dst->n;

	for (size_t i = 0; i < src->n; i++) {
		const struct field *f = &src->f[i];

		if (hdr_is_hop_by_hop(f->name, NULL) || named_by_connection(src, f->name) ||
		    in_skip(f->name, skip))
			continue;
		if (hdr_add(dst, f->name, strlen(f->name), f->value, strlen(f->value)) < 0)
			goto fail;
	}
	return 0;
fail:
	while (dst->n > had) {
		dst->n--;
		free(dst->f[dst->n].name);
		free(dst->f[dst->n].value);
	}
	return -1;
}

/* Exactly one space after the colon, so values with leading blanks survive
 * the round trip through hdr_parse. */
char *hdr_serialize(const struct hdr *h, size_t *len)
{
	size_t total = 0, off = 0;
	char *out;

	for (size_t i = 0; i < h->n; i++)
		total += strlen(h->f[i].name) + 2 + strlen(h->f[i].value) + 1;
	if ((out = malloc(total + 1)) == NULL)
		return NULL;
	for (size_t i = 0; i < h->n; i++) {
		size_t nl = strlen(h->f[i].name), vl = strlen(h->f[i].value);

		memcpy(out + off, h->f[i].name, nl);
		off += nl;
		out[off++] = ':';
		out[off++] = ' ';
		memcpy(out + off, h->f[i].value, vl);
		off += vl;
		out[off++] = '\n';
	}
	out[off] = '\0';
	if (len != NULL)
		*len = off;
	return out;
}

struct hdr *hdr_parse(const char *text, size_t len)
{
	struct hdr *h = hdr_new();
	const char *p = text, *end;

	if (h == NULL)
		goto fail;
	if (len == 0)
		return h;
	end = text + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *colon;

		if (nl == NULL)
			goto fail; /* last line unterminated: truncated block */
		colon = memchr(p, ':', (size_t)(nl - p));
		if (colon == NULL || colon + 1 == nl || colon[1] != ' ')
			goto fail;
		if (hdr_add(h, p, (size_t)(colon - p), colon + 2, (size_t)(nl - colon - 2)) < 0)
			goto fail;
		p = nl + 1;
	}
	return h;
fail:
	hdr_free(&h);
	return NULL;
}
