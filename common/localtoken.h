/*
 * localtoken: the local token endpoint's logic, without HTTP.
 *
 * Reads what a client asks of POST /auth/oauth/token (the SDKs send a form;
 * JSON is accepted too) and makes the answer, in the API's shape, with
 * opaque tokens from getrandom(2) that have no relation to the upstream
 * token, which never leaves the daemon.
 */
#ifndef KD_LOCALTOKEN_H
#define KD_LOCALTOKEN_H

#include <stddef.h>

/* 32 random bytes as 43 base64url characters plus a prefix "kd_"; out must
 * hold LOCALTOKEN_LEN + 1 bytes.  0, or -1 when the kernel gave no randomness. */
#define LOCALTOKEN_LEN 46
int localtoken_new(char *out, size_t outlen);

enum localtoken_grant {
	LOCALTOKEN_CLIENT_CREDENTIALS = 0,
	LOCALTOKEN_REFRESH,     /* refresh_token, with a refresh_token */
	LOCALTOKEN_MISSING,     /* no grant_type at all */
	LOCALTOKEN_UNSUPPORTED, /* another grant_type, or refresh without a token */
};

/*
 * What a token request asks for: content_type (may be NULL) picks JSON or
 * application/x-www-form-urlencoded (fields percent-decoded by curl).
 * Client ids and secrets are not looked at: on loopback any are accepted.
 */
enum localtoken_grant localtoken_parse(const char *content_type, const char *body, size_t len);

/* Everything a token request says; strings malloc'd or NULL. */
struct localtoken_request {
	enum localtoken_grant grant;
	char *client_id;
	char *client_secret; /* wiped by localtoken_request_clear() */
	char *refresh_token;
};

/* Reads a token request (as localtoken_parse()) with its fields. */
void localtoken_read(const char *content_type, const char *body, size_t len,
		     struct localtoken_request *req);
/* Wipes and frees the fields. */
void localtoken_request_clear(struct localtoken_request *req);

/* The answer for the tokens given (refresh "" leaves it out); malloc'd or NULL. */
char *localtoken_answer_with(const char *access, const char *refresh, unsigned lifetime);

/* The token answer as JSON text: {"access_token", "refresh_token",
 * "expires_in": lifetime, "token_type": "bearer"}, with fresh tokens.
 * malloc'd; NULL when no randomness or memory. */
char *localtoken_answer(unsigned lifetime);

#endif
