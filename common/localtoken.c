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
#include "secret.h"

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

/* One part of a form body, decoded as application/x-www-form-urlencoded
 * ('+' is a space, then percent-decoding by curl); malloc'd or NULL. */
static char *form_field(const char *p, size_t len)
{
	int outlen = 0;
	char *d, *copy, *plus;

	/* curl reads a length of 0 as "up to the NUL": not what we mean. */
	if (len == 0)
		return strdup("");
	/* Exactly len bytes (a NUL among them included): curl reads len. */
	if ((plus = malloc(len)) == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++)
		plus[i] = p[i] == '+' ? ' ' : p[i];
	d = curl_easy_unescape(NULL, plus, (int)len, &outlen);
	explicit_bzero(plus, len);
	free(plus);
	copy = d != NULL ? strndup(d, (size_t)outlen) : NULL;
	if (d != NULL)
		explicit_bzero(d, (size_t)outlen);
	curl_free(d);
	return copy;
}

/* Takes a field's value into *slot (malloc'd), replacing an earlier one. */
static void take(char **slot, char *value)
{
	secret_free(slot);
	*slot = value;
}

/* Scans key=value pairs into req. */
static void scan_form(const char *body, size_t len, struct localtoken_request *req,
		      char **grant_type)
{
	const char *p = body, *end = body + len;

	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *stop = amp ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(stop - p));
		char *key = eq ? form_field(p, (size_t)(eq - p)) : NULL;
		char **slot = NULL;

		if (key == NULL)
			;
		else if (strcmp(key, "grant_type") == 0)
			slot = grant_type;
		else if (strcmp(key, "refresh_token") == 0)
			slot = &req->refresh_token;
		else if (strcmp(key, "client_id") == 0)
			slot = &req->client_id;
		else if (strcmp(key, "client_secret") == 0)
			slot = &req->client_secret;
		if (slot != NULL)
			take(slot, form_field(eq + 1, (size_t)(stop - eq - 1)));
		free(key);
		p = stop + 1;
	}
}

static char *json_string(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	return cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

static void scan_json(const char *body, size_t len, struct localtoken_request *req,
		      char **grant_type)
{
	cJSON *o = cJSON_ParseWithLength(body, len);

	*grant_type = json_string(o, "grant_type");
	req->refresh_token = json_string(o, "refresh_token");
	req->client_id = json_string(o, "client_id");
	req->client_secret = json_string(o, "client_secret");
	/* cJSON's copy of the secret goes with the tree: wipe it first. */
	if (req->client_secret != NULL) {
		cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "client_secret");

		explicit_bzero(v->valuestring, strlen(v->valuestring));
	}
	cJSON_Delete(o);
}

void localtoken_read(const char *content_type, const char *body, size_t len,
		     struct localtoken_request *req)
{
	char *gt = NULL;

	memset(req, 0, sizeof(*req));
	if (content_type != NULL && strncasecmp(content_type, "application/json", 16) == 0)
		scan_json(body, len, req, &gt);
	else
		scan_form(body, len, req, &gt);
	if (gt == NULL)
		req->grant = LOCALTOKEN_MISSING;
	else if (strcmp(gt, "client_credentials") == 0)
		req->grant = LOCALTOKEN_CLIENT_CREDENTIALS;
	else if (strcmp(gt, "refresh_token") == 0 && req->refresh_token != NULL &&
		 req->refresh_token[0] != '\0')
		req->grant = LOCALTOKEN_REFRESH;
	else
		req->grant = LOCALTOKEN_UNSUPPORTED;
	free(gt);
}

void localtoken_request_clear(struct localtoken_request *req)
{
	take(&req->client_id, NULL);
	take(&req->client_secret, NULL);
	take(&req->refresh_token, NULL);
}

enum localtoken_grant localtoken_parse(const char *content_type, const char *body, size_t len)
{
	struct localtoken_request req;

	localtoken_read(content_type, body, len, &req);
	localtoken_request_clear(&req);
	return req.grant;
}

char *localtoken_answer_with(const char *access, const char *refresh, unsigned lifetime)
{
	cJSON *o = cJSON_CreateObject();
	char *text = NULL;

	if (o == NULL || cJSON_AddStringToObject(o, "access_token", access) == NULL ||
	    (refresh[0] != '\0' && cJSON_AddStringToObject(o, "refresh_token", refresh) == NULL) ||
	    cJSON_AddNumberToObject(o, "expires_in", lifetime) == NULL ||
	    cJSON_AddStringToObject(o, "token_type", "bearer") == NULL)
		goto out;
	text = cJSON_PrintUnformatted(o);
out:
	cJSON_Delete(o);
	return text;
}

char *localtoken_answer(unsigned lifetime)
{
	char access[LOCALTOKEN_LEN + 1], refresh[LOCALTOKEN_LEN + 1];
	char *text = NULL;

	if (localtoken_new(access, sizeof(access)) == 0 &&
	    localtoken_new(refresh, sizeof(refresh)) == 0)
		text = localtoken_answer_with(access, refresh, lifetime);
	explicit_bzero(access, sizeof(access));
	explicit_bzero(refresh, sizeof(refresh));
	return text;
}
