/*
 * localtoken: opaque bearer tokens for local clients.
 *
 * 32 bytes from getrandom(2), so a token cannot be guessed and reveals
 * nothing about the upstream token.  base64url keeps it safe in headers,
 * URLs and JSON without escaping; the "kd_" prefix makes it recognisable in
 * logs and secret scanners.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "localtoken.h"

#define RAW_LEN 32

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Fills buf with n random bytes; 0, or -1 with errno set. */
static int fill_random(unsigned char *buf, size_t n)
{
	ssize_t r;

	while (n > 0) {
		r = getrandom(buf, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += r;
		n -= (size_t)r;
	}
	return 0;
}

/* base64url of in without padding into out (4 * n / 3 rounded up, plus NUL). */
static void encode(char *out, const unsigned char *in, size_t n)
{
	size_t i;
	unsigned v;

	for (i = 0; i + 3 <= n; i += 3) {
		v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
		*out++ = b64url[v >> 18 & 63];
		*out++ = b64url[v >> 12 & 63];
		*out++ = b64url[v >> 6 & 63];
		*out++ = b64url[v & 63];
	}
	if (n - i == 1) {
		v = (unsigned)in[i] << 16;
		*out++ = b64url[v >> 18 & 63];
		*out++ = b64url[v >> 12 & 63];
	} else if (n - i == 2) {
		v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
		*out++ = b64url[v >> 18 & 63];
		*out++ = b64url[v >> 12 & 63];
		*out++ = b64url[v >> 6 & 63];
	}
	*out = '\0';
}

int localtoken_new(char *out, size_t outlen)
{
	unsigned char raw[RAW_LEN];

	if (out == NULL || outlen < LOCALTOKEN_LEN + 1) {
		errno = EINVAL;
		return -1;
	}
	if (fill_random(raw, sizeof(raw)) != 0)
		return -1;
	memcpy(out, "kd_", 3);
	encode(out + 3, raw, sizeof(raw));
	explicit_bzero(raw, sizeof(raw));
	return 0;
}
