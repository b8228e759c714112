/*
 * audit: the audit trail, one JSON line a request.
 *
 * To a file (appended with O_APPEND, one write(2) a line, so lines from
 * several threads never interleave; reopened on SIGHUP for logrotate) or
 * to the journal (the same fields as structured journal fields through
 * sd_journal_send).  A record holds no token or secret by construction:
 * it has no field for a header, and the query's values of parameters
 * named like credentials are masked (audit_mask_target()).
 */
#ifndef KD_AUDIT_H
#define KD_AUDIT_H

#include <stddef.h>
#include <stdint.h>

struct audit;

struct audit_record {
	int64_t time_ms;     /* wall clock, ms since the epoch */
	const char *id;      /* the request id (X-Request-Id) */
	const char *account; /* NULL: none (the personal daemon, or not authenticated) */
	const char *ip;
	const char *method;
	const char *target; /* as received; masked here */
	unsigned status;
	const char *cache;  /* HIT, MISS, ... or NULL */
	double upstream_ms; /* < 0: the API was not asked */
	uint64_t bytes_in;  /* request body */
	uint64_t bytes_out; /* response body */
};

/* spec: "off" (returns NULL with err ""), "journal", or an absolute file
 * name (made 0640 if missing).  NULL with why in err on failure. */
struct audit *audit_open(const char *spec, char *err, size_t errlen);
/* Opens the file again (after logrotate moved it).  0, or -1 with why
 * (the old file stays in use). */
int audit_reopen(struct audit *a, char *err, size_t errlen);
void audit_close(struct audit **a);

/* Writes one record.  0, or -1 (the error is counted, and logged by the
 * caller at most now and then). */
int audit_write(struct audit *a, const struct audit_record *rec);
/* Records that could not be written since the start. */
unsigned long long audit_errors(struct audit *a);

/*
 * target with the value of every query parameter whose name contains
 * token, secret, passw, credential, apikey, api_key, api-key or signature,
 * or is auth or authorization (any case), replaced by "***"; malloc'd, NULL on ENOMEM.  A request line
 * ("GET /x?token=... HTTP/1.1") works too: a space ends the query.  Also
 * for the debug log's lines, so a token a client put in a URL is written
 * nowhere.
 */
char *audit_mask_target(const char *target);
/* Whether target has such a parameter (then it is never stored either). */
int audit_has_credential(const char *target);

#endif
