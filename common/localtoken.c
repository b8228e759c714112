/*
 * localtoken: opaque bearer tokens for local clients.
 *
 * 32 bytes from getrandom(2), so a token cannot be guessed and reveals
 * nothing about the upstream token.  base64url keeps it safe in headers,
 * URLs and JSON without escaping; the "kd_" prefix makes it recognisable in
 * logs and secret scanners.
 */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

/* One part of a form body, percent-decoded by curl; malloc'd or NULL. */
static char *form_field(const char *p, size_t len)
{
	int outlen = 0;
	char *d, *copy;

	/* curl reads a length of 0 as "up to the NUL": not what we mean. */
	if (len == 0)
		return strdup("");
	d = curl_easy_unescape(NULL, p, (int)len, &outlen);
	copy = d != NULL ? strndup(d, (size_t)outlen) : NULL;
	curl_free(d);
	return copy;
}

/* Scans key=value pairs; sets *grant_type (malloc'd) and *has_refresh. */
static void scan_form(const char *body, size_t len, char **grant_type, int *has_refresh)
{
	const char *p = body, *end = body + len;

	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *stop = amp ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(stop - p));
		char *key = eq ? form_field(p, (size_t)(eq - p)) : NULL;

		if (key != NULL && strcmp(key, "grant_type") == 0) {
			free(*grant_type);
			*grant_type = form_field(eq + 1, (size_t)(stop - eq - 1));
		} else if (key != NULL && strcmp(key, "refresh_token") == 0) {
			*has_refresh = stop > eq + 1;
		}
		free(key);
		p = stop + 1;
	}
}

static void scan_json(const char *body, size_t len, char **grant_type, int *has_refresh)
{
	cJSON *o = cJSON_ParseWithLength(body, len);
	const cJSON *gt = cJSON_GetObjectItemCaseSensitive(o, "grant_type");
	const cJSON *rt = cJSON_GetObjectItemCaseSensitive(o, "refresh_token");

	if (cJSON_IsString(gt))
		*grant_type = strdup(gt->valuestring);
	*has_refresh = cJSON_IsString(rt) && rt->valuestring[0] != '\0';
	cJSON_Delete(o);
}

enum localtoken_grant localtoken_parse(const char *content_type, const char *body, size_t len)
{
	char *gt = NULL;
	int has_refresh = 0;
	enum localtoken_grant g;

	if (content_type != NULL && strncasecmp(content_type, "application/json", 16) == 0)
		scan_json(body, len, &gt, &has_refresh);
	else
		scan_form(body, len, &gt, &has_refresh);
	if (gt == NULL)
		g = LOCALTOKEN_MISSING;
	else if (strcmp(gt, "client_credentials") == 0)
		g = LOCALTOKEN_CLIENT_CREDENTIALS;
	else if (strcmp(gt, "refresh_token") == 0 && has_refresh)
		g = LOCALTOKEN_REFRESH;
	else
		g = LOCALTOKEN_UNSUPPORTED;
	free(gt);
	return g;
}

char *localtoken_answer(unsigned lifetime)
{
	char access[LOCALTOKEN_LEN + 1], refresh[LOCALTOKEN_LEN + 1];
	cJSON *o = NULL;
	char *text = NULL;

	if (localtoken_new(access, sizeof(access)) < 0 ||
	    localtoken_new(refresh, sizeof(refresh)) < 0 || (o = cJSON_CreateObject()) == NULL)
		goto out;
	if (cJSON_AddStringToObject(o, "access_token", access) == NULL ||
	    cJSON_AddStringToObject(o, "refresh_token", refresh) == NULL ||
	    cJSON_AddNumberToObject(o, "expires_in", lifetime) == NULL ||
	    cJSON_AddStringToObject(o, "token_type", "bearer") == NULL)
		goto out;
	text = cJSON_PrintUnformatted(o);
out:
	cJSON_Delete(o);
	explicit_bzero(access, sizeof(access));
	explicit_bzero(refresh, sizeof(refresh));
	return text;
}
