/*
 * fuzz_reqcheck: the strict checks of a client's request (common/reqcheck.c)
 * that decide what is refused before anything is forwarded with the
 * workspace token: reqcheck_target(), reqcheck_field(),
 * reqcheck_content_length() and reqcheck_transfer_encoding().
 *
 * Input, read four ways: up to the first NUL, a request target and a
 * Transfer-Encoding value; up to the first ':', a field name, and after it
 * the value (both as exactly their bytes, NULs included); up to the first
 * NUL, a comma-separated list of Content-Length values, one per field line.
 *
 * Invariants:
 *  - an accepted target has no control byte, blank or DEL, and no path
 *    segment that is "." or ".." once "%2e" (any case) is read as '.';
 *  - an accepted field has a non-empty name of tchars (RFC 9110 5.6.2) and
 *    a value without control bytes but HTAB, and is one header line that
 *    hdr_add() takes (so it can be forwarded and stored);
 *  - accepted Content-Length values are equal and each is 1 to 18 digits,
 *    so the length fits an int64 without overflow;
 *  - a Transfer-Encoding is read as chunked exactly when it is "chunked"
 *    (any case) and nothing else; one whose last coding is not chunked is
 *    bad (400); "unsupported" (501) means a real coding before chunked.
 */
#include <strings.h>

#include "fuzz.h"
#include "hdr.h"
#include "reqcheck.h"

#define MAX_CL 8

/* Whether segment [s, s+n) reads "." or ".." once every "%2e" is a '.'. */
static int dot_segment(const char *s, size_t n)
{
	size_t dots = 0;

	for (size_t i = 0; i < n; dots++) {
		if (s[i] == '.')
			i++;
		else if (i + 3 <= n && s[i] == '%' && s[i + 1] == '2' && (s[i + 2] | 0x20) == 'e')
			i += 3;
		else
			return 0;
	}
	return dots == 1 || dots == 2;
}

static void check_target(const char *t)
{
	const char *why = reqcheck_target(t);
	size_t plen = strcspn(t, "?");

	if (why != NULL) {
		FUZZ_CHECK(why[0] != '\0', "an empty reason");
		return;
	}
	for (const char *p = t; *p != '\0'; p++)
		FUZZ_CHECK((unsigned char)*p > 0x20 && *p != 0x7f, "byte 0x%02x accepted",
			   (unsigned char)*p);
	for (size_t i = 0; i < plen;) {
		size_t n = strcspn(t + i, "/");

		if (n > plen - i)
			n = plen - i;
		FUZZ_CHECK(!dot_segment(t + i, n), "dot segment at %zu accepted: %s", i, t);
		i += n + 1;
	}
}

static int is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void check_field(const uint8_t *data, size_t size)
{
	const uint8_t *colon = memchr(data, ':', size);
	size_t nlen = colon != NULL ? (size_t)(colon - data) : size;
	size_t vlen = colon != NULL ? size - nlen - 1 : 0;
	char *name = fuzz_bytes(data, nlen),
	     *value = fuzz_bytes(colon != NULL ? colon + 1 : data, vlen);
	const char *why = reqcheck_field(name, nlen, value, vlen);
	struct hdr *h;

	if (why == NULL) {
		FUZZ_CHECK(nlen > 0, "an empty name accepted");
		for (size_t i = 0; i < nlen; i++)
			FUZZ_CHECK(is_tchar((unsigned char)name[i]), "name byte 0x%02x accepted",
				   (unsigned char)name[i]);
		for (size_t i = 0; i < vlen; i++) {
			unsigned char c = (unsigned char)value[i];

			FUZZ_CHECK((c >= 0x20 || c == '\t') && c != 0x7f,
				   "value byte 0x%02x accepted", c);
		}
		if ((h = hdr_new()) == NULL)
			abort();
		FUZZ_CHECK(hdr_add(h, name, nlen, value, vlen) == 0,
			   "accepted, but not a header line hdr_add() takes");
		hdr_free(&h);
	}
	free(name);
	free(value);
}

static void check_content_length(const char *list)
{
	const char *values[MAX_CL];
	char *copy = strdup(list), *p;
	size_t n = 0;
	const char *why;

	if (copy == NULL)
		abort();
	for (p = copy; n < MAX_CL;) {
		values[n++] = p;
		if ((p = strchr(p, ',')) == NULL)
			break;
		*p++ = '\0';
	}
	why = reqcheck_content_length(values, n);
	if (why == NULL) {
		for (size_t i = 0; i < n; i++) {
			size_t len = strlen(values[i]);

			FUZZ_CHECK(len >= 1 && len <= 18 && strspn(values[i], "0123456789") == len,
				   "Content-Length \"%s\" accepted", values[i]);
			FUZZ_CHECK(strcmp(values[i], values[0]) == 0, "two lengths accepted");
		}
		FUZZ_CHECK(strtoull(values[0], NULL, 10) <= (unsigned long long)INT64_MAX,
			   "an accepted length overflows");
	}
	free(copy);
}

static void check_transfer_encoding(const char *v)
{
	enum reqcheck_te te = reqcheck_transfer_encoding(v);
	const char *last = NULL;
	size_t last_len = 0;
	int others = 0;

	/* the codings: comma-separated, blanks around each, empty ones skipped */
	for (const char *p = v; *p != '\0';) {
		const char *s = p, *e = p + strcspn(p, ",");

		while (s < e && (*s == ' ' || *s == '\t'))
			s++;
		while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (e > s) {
			if (last != NULL &&
			    !(last_len == 7 && strncasecmp(last, "chunked", 7) == 0))
				others++;
			last = s;
			last_len = (size_t)(e - s);
		}
		p += strcspn(p, ",");
		if (*p == ',')
			p++;
	}
	FUZZ_CHECK(te == REQCHECK_TE_CHUNKED || te == REQCHECK_TE_BAD ||
			   te == REQCHECK_TE_UNSUPPORTED,
		   "answer %d", (int)te);
	FUZZ_CHECK((te == REQCHECK_TE_CHUNKED) == (strcasecmp(v, "chunked") == 0),
		   "\"%s\" read as chunked: %d", v, te == REQCHECK_TE_CHUNKED);
	if (last == NULL || last_len != 7 || strncasecmp(last, "chunked", 7) != 0)
		FUZZ_CHECK(te == REQCHECK_TE_BAD, "\"%s\": the last coding is not chunked", v);
	if (te == REQCHECK_TE_UNSUPPORTED)
		FUZZ_CHECK(others > 0, "\"%s\": unsupported without another coding", v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_cstr(data, size);

	check_target(text);
	check_field(data, size);
	check_content_length(text);
	check_transfer_encoding(text);
	free(text);
	return 0;
}
