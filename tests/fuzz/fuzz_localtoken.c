/*
 * fuzz_localtoken: what a client's POST /auth/oauth/token asks for
 * (localtoken_parse()), as a form and as JSON.
 *
 * Input: the first byte picks the Content-Type (none, a form, JSON, JSON
 * with parameters, JSON in capitals, text/plain); the rest is the body,
 * handed over as exactly its bytes.  Each body is also read as the other
 * kind.
 *
 * Invariants:
 *  - the answer is one of the four grants;
 *  - a form without percent-escapes and NUL bytes is read as the form's own
 *    rules say: the last grant_type names the grant, the last refresh_token
 *    (non-empty) makes a refresh_token grant valid.
 */
#include <strings.h>

#include "fuzz.h"
#include "localtoken.h"

static const char *const types[] = {
	NULL,
	"application/x-www-form-urlencoded",
	"application/json",
	"application/json; charset=utf-8",
	"APPLICATION/JSON",
	"text/plain",
};

/* The grant a plain form (no '%', no NUL) asks for, by the form's rules. */
static enum localtoken_grant plain_form(const char *body, size_t len)
{
	const char *p = body, *end = body + len;
	const char *gt = NULL;
	size_t gtlen = 0;
	int refresh = 0;

	while (p <= end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *stop = amp != NULL ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(stop - p));

		if (eq != NULL && eq - p == 10 && memcmp(p, "grant_type", 10) == 0) {
			gt = eq + 1;
			gtlen = (size_t)(stop - gt);
		} else if (eq != NULL && eq - p == 13 && memcmp(p, "refresh_token", 13) == 0) {
			refresh = stop > eq + 1;
		}
		if (amp == NULL)
			break;
		p = amp + 1;
	}
	if (gt == NULL)
		return LOCALTOKEN_MISSING;
	if (gtlen == 18 && memcmp(gt, "client_credentials", 18) == 0)
		return LOCALTOKEN_CLIENT_CREDENTIALS;
	if (gtlen == 13 && memcmp(gt, "refresh_token", 13) == 0 && refresh)
		return LOCALTOKEN_REFRESH;
	return LOCALTOKEN_UNSUPPORTED;
}

static void check_grant(enum localtoken_grant g)
{
	FUZZ_CHECK(g == LOCALTOKEN_CLIENT_CREDENTIALS || g == LOCALTOKEN_REFRESH ||
			   g == LOCALTOKEN_MISSING || g == LOCALTOKEN_UNSUPPORTED,
		   "grant %d", (int)g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *ct;
	char *body;
	size_t len;
	enum localtoken_grant g, form, json;

	if (size == 0)
		return 0;
	ct = types[data[0] % (sizeof(types) / sizeof(types[0]))];
	len = size - 1;
	body = fuzz_bytes(data + 1, len);

	g = localtoken_parse(ct, body, len);
	form = localtoken_parse("application/x-www-form-urlencoded", body, len);
	json = localtoken_parse("application/json", body, len);
	check_grant(g);
	check_grant(form);
	check_grant(json);
	FUZZ_CHECK(g == (ct != NULL && strncasecmp(ct, "application/json", 16) == 0 ? json : form),
		   "the Content-Type picked neither reading");
	if (memchr(body, '%', len) == NULL && memchr(body, '\0', len) == NULL)
		FUZZ_CHECK(form == plain_form(body, len), "form read as %d, by its rules %d",
			   (int)form, (int)plain_form(body, len));
	free(body);
	return 0;
}
