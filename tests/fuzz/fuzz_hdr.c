/*
 * fuzz_hdr: header lists (common/hdr.c).
 *
 * The input is read three ways: as a stored header block (hdr_parse(), what
 * the cache file and memory hand back), as raw header lines the way curl
 * delivers them (hdr_add_line(), each line with its LF), and then through
 * the proxy's rules (hdr_copy_end_to_end(), hdr_is_hop_by_hop(),
 * hdr_remove(), hdr_get()).
 *
 * Invariants:
 *  - a block that parses serialises back to exactly its bytes;
 *  - whatever hdr_add_line() accepted serialises to a block that parses
 *    back to the same fields, each name without blank, CTL or ':', each
 *    value without CR, LF or NUL and without blanks at either end;
 *  - hdr_copy_end_to_end() keeps no hop-by-hop field, nothing a Connection
 *    field names and nothing in the skip list, and keeps the order;
 *  - after hdr_remove(name), hdr_get(name) is NULL.
 */
#include <strings.h>

#include "fuzz.h"
#include "hdr.h"

static void check_field(const struct hdr *h, size_t i)
{
	const char *n = hdr_name(h, i), *v = hdr_value(h, i);

	FUZZ_CHECK(n[0] != '\0', "empty name at %zu", i);
	for (const char *c = n; *c != '\0'; c++)
		FUZZ_CHECK((unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f && *c != ':',
			   "name byte 0x%02x", (unsigned char)*c);
	FUZZ_CHECK(strpbrk(v, "\r\n") == NULL, "CR or LF in a value");
}

static void same_fields(const struct hdr *a, const struct hdr *b)
{
	FUZZ_CHECK(hdr_count(a) == hdr_count(b), "%zu fields became %zu", hdr_count(a),
		   hdr_count(b));
	for (size_t i = 0; i < hdr_count(a); i++) {
		FUZZ_CHECK(strcmp(hdr_name(a, i), hdr_name(b, i)) == 0, "name %zu changed", i);
		FUZZ_CHECK(strcmp(hdr_value(a, i), hdr_value(b, i)) == 0, "value %zu changed", i);
	}
}

/* Whether some Connection field of h names name (comma-separated, OWS, any case). */
static int named_by_connection(const struct hdr *h, const char *name)
{
	size_t nl = strlen(name);

	for (size_t i = 0; i < hdr_count(h); i++) {
		const char *p = hdr_value(h, i);

		if (strcasecmp(hdr_name(h, i), "Connection") != 0)
			continue;
		while (*p != '\0') {
			const char *tok, *end;

			while (*p == ',' || *p == ' ' || *p == '\t')
				p++;
			tok = p;
			while (*p != '\0' && *p != ',')
				p++;
			end = p;
			while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
				end--;
			if ((size_t)(end - tok) == nl && strncasecmp(tok, name, nl) == 0)
				return 1;
		}
	}
	return 0;
}

static void check_end_to_end(const struct hdr *src)
{
	static const char *const skip[] = { "Host", "Content-Length", "Authorization", NULL };
	struct hdr *dst = hdr_new();
	size_t j = 0;

	if (dst == NULL)
		abort();
	if (hdr_copy_end_to_end(dst, src, skip) < 0)
		abort(); /* only on ENOMEM */
	for (size_t i = 0; i < hdr_count(dst); i++) {
		const char *n = hdr_name(dst, i);

		FUZZ_CHECK(!hdr_is_hop_by_hop(n, NULL), "hop-by-hop %s forwarded", n);
		FUZZ_CHECK(!named_by_connection(src, n), "%s named by Connection, forwarded", n);
		for (size_t k = 0; skip[k] != NULL; k++)
			FUZZ_CHECK(strcasecmp(n, skip[k]) != 0, "skipped %s forwarded", n);
		/* a subsequence of src, in order */
		while (j < hdr_count(src) && (strcmp(hdr_name(src, j), n) != 0 ||
					      strcmp(hdr_value(src, j), hdr_value(dst, i)) != 0))
			j++;
		FUZZ_CHECK(j < hdr_count(src), "field %s: not from the source, or out of order", n);
		j++;
	}
	hdr_free(&dst);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data, *p, *end = text + size;
	struct hdr *h, *lines, *back;
	char *s;
	size_t slen;

	/* 1. a stored block: exactly the input's bytes, no terminator */
	h = hdr_parse(text, size);
	if (h != NULL) {
		for (size_t i = 0; i < hdr_count(h); i++)
			check_field(h, i);
		s = hdr_serialize(h, &slen);
		if (s == NULL)
			abort();
		FUZZ_CHECK(slen == size && memcmp(s, data, size) == 0,
			   "a parsed block serialises to other bytes (%zu, was %zu)", slen, size);
		free(s);
		hdr_free(&h);
	}

	/* 2. raw lines as curl hands them over, each with its LF */
	if ((lines = hdr_new()) == NULL)
		abort();
	for (p = text; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) + 1 : (size_t)(end - p);
		char *line = fuzz_bytes(p, len);
		size_t before = hdr_count(lines);

		if (hdr_add_line(lines, line, len) == 0) {
			const char *v;

			FUZZ_CHECK(hdr_count(lines) == before + 1, "accepted but not added");
			check_field(lines, before);
			v = hdr_value(lines, before);
			FUZZ_CHECK(v[0] != ' ' && v[0] != '\t', "value starts with a blank");
			FUZZ_CHECK(v[0] == '\0' ||
					   (v[strlen(v) - 1] != ' ' && v[strlen(v) - 1] != '\t'),
				   "value ends with a blank");
		} else {
			FUZZ_CHECK(hdr_count(lines) == before, "refused but added");
		}
		free(line);
		p += len;
	}
	s = hdr_serialize(lines, &slen);
	if (s == NULL)
		abort();
	FUZZ_CHECK(strlen(s) == slen, "NUL inside a serialised block");
	back = hdr_parse(s, slen);
	FUZZ_CHECK(back != NULL, "a serialised block does not parse:\n%s", s);
	same_fields(lines, back);
	free(s);
	hdr_free(&back);

	/* 3. the proxy's rules over those fields */
	check_end_to_end(lines);
	if (hdr_count(lines) > 0) {
		char *name = strdup(hdr_name(lines, 0));
		size_t before = hdr_count(lines);
		int gone;

		if (name == NULL)
			abort();
		FUZZ_CHECK(hdr_get(lines, name) == hdr_value(lines, 0), "hdr_get missed the first");
		gone = hdr_remove(lines, name);
		FUZZ_CHECK(gone >= 1 && hdr_count(lines) == before - (size_t)gone, "removed %d",
			   gone);
		FUZZ_CHECK(hdr_get(lines, name) == NULL, "%s still there after hdr_remove", name);
		free(name);
	}
	hdr_free(&lines);
	return 0;
}
