/*
 * fuzz_auth: the token endpoint's answer, as auth_finish() digests it (the
 * JSON of a grant, or the body of a refusal), over a few rounds so refresh
 * grants, fallbacks and backoff are reached too.
 *
 * Input: up to 4 rounds, each a header byte, a 2-byte little-endian body
 * length, and the body.  The header byte's low 3 bits pick the status (200,
 * 200, 200, 201, 400, 401, 503, or 0: a transport error whose text is the
 * body's first 255 bytes, as long as curl's error texts get), the next 2
 * how far the clock moves first, bit 5 forces the request.
 *
 * Invariants (the client secret is SECRET, its form-encoding SECRET_ESC):
 *  - a success holds a token of printable ASCII without blanks, state OK,
 *    no error, and schedules the next request in the future;
 *  - a failure records a reason: one line, without a control character;
 *  - no reason shows the secret, whole or in part: any 6 bytes of SECRET or
 *    SECRET_ESC it holds were in the answer apart from every whole
 *    occurrence of the secret (auth.h: "never containing the secret";
 *    auth.c: "a cut never leaves part of a secret").
 */
#include <math.h>

#include "auth.h"
#include "fuzz.h"

#define SECRET "kd-Fz5ecr3t/Q9+x"
#define SECRET_ESC "kd-Fz5ecr3t%2FQ9%2Bx"
#define PIECE 6

static const long statuses[] = { 200, 200, 200, 201, 400, 401, 503, 0 };
static const double steps[] = { 0, 5, 4000, 1e6 };

/* s with every occurrence of needle replaced by "***", as auth.c scrubs. */
static char *replace_all(const char *s, const char *needle)
{
	size_t nl = strlen(needle), off = 0;
	char *out = fuzz_xmalloc(strlen(s) * 3 + 1);
	const char *p = s, *q;

	while ((q = strstr(p, needle)) != NULL) {
		memcpy(out + off, p, (size_t)(q - p));
		off += (size_t)(q - p);
		memcpy(out + off, "***", 3);
		off += 3;
		p = q + nl;
	}
	strcpy(out + off, p);
	return out;
}

/* The answer as a reason may show it: every control byte (NUL too) as '?'. */
static char *visible(const char *body, size_t len)
{
	char *v = fuzz_xmalloc(len + 1);

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)body[i];

		v[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	v[len] = '\0';
	return v;
}

/* No PIECE bytes of needle in reason that the answer, secrets removed, lacks. */
static void check_no_piece(const char *reason, const char *clean, const char *needle)
{
	char piece[PIECE + 1];
	size_t nl = strlen(needle);

	for (size_t i = 0; i + PIECE <= nl; i++) {
		memcpy(piece, needle + i, PIECE);
		piece[PIECE] = '\0';
		FUZZ_CHECK(strstr(reason, piece) == NULL || strstr(clean, piece) != NULL,
			   "the reason shows part of the secret (\"%s\"): %s", piece, reason);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct auth *a = auth_new("kd-fuzz-client", SECRET, 1, 300);
	double now = 1000.0;
	size_t off = 0;

	if (a == NULL)
		abort();
	for (int round = 0; round < 4 && off + 3 <= size; round++) {
		unsigned hdr = data[off];
		size_t len = (size_t)data[off + 1] | (size_t)data[off + 2] << 8;
		long status = statuses[hdr & 7];
		struct auth_status st;
		unsigned gen_before, gen_after;
		char *form = NULL, *body, *terr = NULL, *v, *c1, *clean;
		int rc;

		off += 3;
		if (len > size - off)
			len = size - off;
		body = fuzz_bytes(data + off, len);
		off += len;

		now += steps[(hdr >> 3) & 3];
		if (auth_begin(a, now, (hdr >> 5) & 1, &form) == 0) {
			/* not due, or backing off: come back when it is */
			double due = auth_next_due(a, now);

			FUZZ_CHECK(due >= 0 && isfinite(due), "nothing due, ever (%f)", due);
			now += due + 1e-3; /* past it, whatever the rounding */
			FUZZ_CHECK(auth_begin(a, now, 0, &form) == 1, "due but not begun");
		}
		FUZZ_CHECK(form != NULL && strncmp(form, "grant_type=", 11) == 0, "form %s", form);
		FUZZ_CHECK(strstr(form, SECRET) == NULL, "the secret unescaped in the form");
		free(form);
		FUZZ_CHECK(auth_busy(a), "not busy after auth_begin");
		auth_token(a, now, &gen_before);

		/* curl's error buffer holds CURL_ERROR_SIZE (256) bytes with the NUL */
		if (status == 0)
			terr = visible(body, len < 255 ? len : 255);
		rc = auth_finish(a, now, status, status == 0 ? NULL : body, status == 0 ? 0 : len,
				 terr);
		FUZZ_CHECK(!auth_busy(a), "still busy after auth_finish");
		auth_status(a, &st);
		if (rc == 0) {
			const char *tok = auth_token(a, now, &gen_after);

			FUZZ_CHECK(status >= 200 && status <= 299, "success on %ld", status);
			FUZZ_CHECK(tok != NULL && tok[0] != '\0', "success without a token");
			for (const char *c = tok; *c != '\0'; c++)
				FUZZ_CHECK(*c > ' ' && *c <= '~', "token byte 0x%02x",
					   (unsigned char)*c);
			FUZZ_CHECK(gen_after != gen_before, "a new token, the same generation");
			FUZZ_CHECK(st.state == AUTH_OK && st.last_error[0] == '\0', "state %s: %s",
				   auth_state_name(st.state), st.last_error);
			FUZZ_CHECK(auth_next_due(a, now) > 0, "refresh due at once");
		} else {
			/* the answer with every whole secret gone: what the reason may show */
			v = status == 0 ? strdup(terr) : visible(body, len);
			if (v == NULL)
				abort();
			c1 = replace_all(v, SECRET);
			clean = replace_all(c1, SECRET_ESC);
			FUZZ_CHECK(rc == -1, "rc %d", rc);
			FUZZ_CHECK(st.last_error[0] != '\0', "a failure without a reason");
			for (const char *c = st.last_error; *c != '\0'; c++)
				FUZZ_CHECK((unsigned char)*c >= 0x20 && *c != 0x7f,
					   "control character in the reason");
			FUZZ_CHECK(strstr(st.last_error, SECRET) == NULL &&
					   strstr(st.last_error, SECRET_ESC) == NULL,
				   "the reason shows the secret: %s", st.last_error);
			check_no_piece(st.last_error, clean, SECRET);
			check_no_piece(st.last_error, clean, SECRET_ESC);
			free(v);
			free(c1);
			free(clean);
		}
		free(terr);
		free(body);
	}
	auth_free(&a);
	return 0;
}
