/*
 * reqcheck: byte-level checks of the request line and header fields.
 * Pure functions over what libmicrohttpd hands over; see reqcheck.h.
 */
#include "reqcheck.h"

#include <string.h>
#include <strings.h>

/* RFC 9110 5.6.2: tchar. */
static int is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Whether the segment [s, s+n) is "." or "..", with any dot percent-encoded. */
static int dot_segment(const char *s, size_t n)
{
	int dots = 0;

	while (n > 0) {
		if (*s == '.') {
			s++;
			n--;
		} else if (n >= 3 && s[0] == '%' && s[1] == '2' && (s[2] == 'e' || s[2] == 'E')) {
			s += 3;
			n -= 3;
		} else {
			return 0;
		}
		dots++;
	}
	return dots == 1 || dots == 2;
}

const char *reqcheck_target(const char *target)
{
	size_t plen;

	for (const unsigned char *p = (const unsigned char *)target; *p != '\0'; p++)
		if (*p <= 0x20 || *p == 0x7f)
			return "the request target holds a control byte or a space";
	plen = strcspn(target, "?");
	for (size_t i = 0; i < plen;) {
		size_t n;

		if (target[i] == '/') {
			i++;
			continue;
		}
		n = strcspn(target + i, "/?");
		if (n > plen - i)
			n = plen - i;
		if (dot_segment(target + i, n))
			return "the request path holds a '.' or '..' segment; send the path it "
			       "stands for";
		i += n;
	}
	return NULL;
}

const char *reqcheck_field(const char *name, size_t name_len, const char *value, size_t value_len)
{
	if (name_len == 0)
		return "a header field has no name";
	for (size_t i = 0; i < name_len; i++)
		if (!is_tchar((unsigned char)name[i]))
			return "a header field name holds a byte a name cannot have (a space, a "
			       "control byte or a separator)";
	for (size_t i = 0; value != NULL && i < value_len; i++) {
		unsigned char c = (unsigned char)value[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return "a header field value holds a control byte (CR, LF or NUL)";
	}
	return NULL;
}

const char *reqcheck_content_length(const char *const *values, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *v = values[i];

		if (v[0] == '\0' || strspn(v, "0123456789") != strlen(v) || strlen(v) > 18)
			return "Content-Length is not a number";
		if (i > 0 && strcmp(v, values[0]) != 0)
			return "the request has two different Content-Length values";
	}
	return NULL;
}

enum reqcheck_te reqcheck_transfer_encoding(const char *value)
{
	const char *last = NULL, *p = value;
	size_t last_len = 0;
	int codings = 0, others = 0;

	/* libmicrohttpd 0.9.75 decodes chunked only for exactly this value
	 * (case aside); anything else it would read until the client closes. */
	if (strcasecmp(value, "chunked") == 0)
		return REQCHECK_TE_CHUNKED;
	while (*p != '\0') {
		size_t n;

		p += strspn(p, " \t,");
		n = strcspn(p, ",");
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n > 0) {
			others += last != NULL &&
				  !(last_len == 7 && strncasecmp(last, "chunked", 7) == 0);
			last = p;
			last_len = n;
			codings++;
		}
		p += strcspn(p, ",");
	}
	if (last == NULL || last_len != 7 || strncasecmp(last, "chunked", 7) != 0)
		return REQCHECK_TE_BAD;
	/* Ends in chunked: a real coding before it is not supported; stray
	 * whitespace, commas or chunked twice are malformed. */
	return codings > 1 && others > 0 ? REQCHECK_TE_UNSUPPORTED : REQCHECK_TE_BAD;
}
