/*
 * audit: JSON lines through cJSON (so every string is escaped), or
 * journal fields through libsystemd.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "check.h"

struct audit {
	unsigned magic;
#define AUDIT_MAGIC 0x4a0d17e5u
	int journal;
	char *path;
	int fd; /* the file, its number fixed (see audit_reopen()); -1 journal */
	atomic_ullong errors;
};

static void set_err(char *err, size_t errlen, const char *what, const char *path)
{
	snprintf(err, errlen, "%s%s%s", path ? path : "", path ? ": " : "", what);
}

static int open_file(const char *path)
{
	return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
}

struct audit *audit_open(const char *spec, char *err, size_t errlen)
{
	struct audit *a;
	int fd = -1;

	err[0] = '\0';
	if (spec == NULL || strcmp(spec, "off") == 0)
		return NULL;
	if (strcmp(spec, "journal") != 0 && (fd = open_file(spec)) < 0) {
		set_err(err, errlen, strerror(errno), spec);
		return NULL;
	}
	if ((a = calloc(1, sizeof(*a))) == NULL || (fd >= 0 && (a->path = strdup(spec)) == NULL)) {
		free(a);
		if (fd >= 0)
			close(fd);
		set_err(err, errlen, "out of memory", NULL);
		return NULL;
	}
	INIT_OBJ(a, AUDIT_MAGIC);
	a->journal = fd < 0;
	a->fd = fd;
	atomic_init(&a->errors, 0);
	return a;
}

int audit_reopen(struct audit *a, char *err, size_t errlen)
{
	int fd, rc = 0;

	CHECK_OBJ(a, AUDIT_MAGIC);
	if (a->journal)
		return 0;
	if ((fd = open_file(a->path)) < 0) {
		set_err(err, errlen, strerror(errno), a->path);
		return -1;
	}
	/* dup2 puts the new file behind the same descriptor number in one
	 * step: a writer in another thread writes a whole line to the old
	 * file or to the new one, never to a closed or reused number. */
	if (dup2(fd, a->fd) < 0) {
		set_err(err, errlen, strerror(errno), a->path);
		rc = -1;
	}
	close(fd);
	return rc;
}

void audit_close(struct audit **ap)
{
	struct audit *a = *ap;

	if (a == NULL)
		return;
	*ap = NULL;
	CHECK_OBJ(a, AUDIT_MAGIC);
	if (!a->journal)
		close(a->fd);
	free(a->path);
	FINI_OBJ(a);
	free(a);
}

unsigned long long audit_errors(struct audit *a)
{
	CHECK_OBJ(a, AUDIT_MAGIC);
	return atomic_load(&a->errors);
}

/* ---- masking ---- */

/* Names of query parameters that carry credentials by convention.  A
 * plain "key" is not one: the API itself takes ?key= for identifiers. */
static int credential_name(const char *name, size_t n)
{
	static const char *const parts[] = { "token",      "secret",    "passw",
					     "credential", "apikey",    "api_key",
					     "api-key",    "signature", NULL };
	static const char *const whole[] = { "auth", "authorization", NULL };
	char low[128];

	if (n >= sizeof(low))
		n = sizeof(low) - 1;
	for (size_t i = 0; i < n; i++)
		low[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
	low[n] = '\0';
	for (int i = 0; parts[i] != NULL; i++)
		if (strstr(low, parts[i]) != NULL)
			return 1;
	for (int i = 0; whole[i] != NULL; i++)
		if (strcmp(low, whole[i]) == 0)
			return 1;
	return 0;
}

char *audit_mask_target(const char *target)
{
	const char *q = strchr(target, '?');
	size_t len = strlen(target);
	char *out = malloc(len + 1 + 3 * (len / 2 + 1)), *o;
	const char *p;

	if (out == NULL)
		return NULL;
	if (q == NULL) {
		memcpy(out, target, len + 1);
		return out;
	}
	memcpy(out, target, (size_t)(q - target) + 1);
	o = out + (q - target) + 1;
	for (p = q + 1; *p != '\0';) {
		size_t plen = strcspn(p, "&# "), nlen = strcspn(p, "=&# ");

		if (nlen < plen && credential_name(p, nlen)) {
			memcpy(o, p, nlen + 1);
			o += nlen + 1;
			memcpy(o, "***", 3);
			o += 3;
		} else {
			memcpy(o, p, plen);
			o += plen;
		}
		p += plen;
		if (*p == '&') {
			*o++ = *p++;
		} else if (*p == ' ') {
			/* The rest of a request line (" HTTP/1.1"): kept as it is. */
			memcpy(o, p, strlen(p));
			o += strlen(p);
			break;
		} else if (*p == '#') {
			/* A fragment never reaches a server; keep nothing of it. */
			break;
		}
	}
	*o = '\0';
	return out;
}

int audit_has_credential(const char *target)
{
	char *masked = audit_mask_target(target);
	int yes = masked == NULL || strcmp(masked, target) != 0;

	free(masked);
	return yes;
}

/* ---- writing ---- */

static void iso_time(int64_t ms, char *out, size_t len)
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;

	gmtime_r(&secs, &tm);
	snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static int write_journal(const struct audit_record *rec, const char *when, const char *target)
{
	char up[32];

	snprintf(up, sizeof(up), "%.3f", rec->upstream_ms);
	return sd_journal_send(
		"MESSAGE=%s %s -> %u %s%s%s", rec->method, target, rec->status,
		rec->cache ? rec->cache : "", rec->account ? " account " : "",
		rec->account ? rec->account : "", "PRIORITY=6", "SYSLOG_IDENTIFIER=kaleidod-audit",
		"KALEIDOD_TIME=%s", when, "KALEIDOD_REQUEST_ID=%s", rec->id, "KALEIDOD_ACCOUNT=%s",
		rec->account ? rec->account : "", "KALEIDOD_CLIENT_IP=%s", rec->ip,
		"KALEIDOD_METHOD=%s", rec->method, "KALEIDOD_PATH=%s", target, "KALEIDOD_STATUS=%u",
		rec->status, "KALEIDOD_CACHE=%s", rec->cache ? rec->cache : "",
		"KALEIDOD_UPSTREAM_MS=%s", rec->upstream_ms >= 0 ? up : "",
		"KALEIDOD_BYTES_IN=%llu", (unsigned long long)rec->bytes_in,
		"KALEIDOD_BYTES_OUT=%llu", (unsigned long long)rec->bytes_out, NULL);
}

static char *json_line(const struct audit_record *rec, const char *when, const char *target)
{
	cJSON *o = cJSON_CreateObject();
	char *text = NULL, *line = NULL;
	size_t n;

	if (o == NULL || !cJSON_AddStringToObject(o, "time", when) ||
	    !cJSON_AddStringToObject(o, "id", rec->id) ||
	    !(rec->account ? cJSON_AddStringToObject(o, "account", rec->account) :
			     cJSON_AddNullToObject(o, "account")) ||
	    !cJSON_AddStringToObject(o, "ip", rec->ip) ||
	    !cJSON_AddStringToObject(o, "method", rec->method) ||
	    !cJSON_AddStringToObject(o, "path", target) ||
	    !cJSON_AddNumberToObject(o, "status", rec->status) ||
	    !(rec->cache ? cJSON_AddStringToObject(o, "cache", rec->cache) :
			   cJSON_AddNullToObject(o, "cache")) ||
	    !(rec->upstream_ms >= 0 ?
		      cJSON_AddNumberToObject(o, "upstream_ms",
					      (double)(int64_t)(rec->upstream_ms * 1000) / 1000) :
		      cJSON_AddNullToObject(o, "upstream_ms")) ||
	    !cJSON_AddNumberToObject(o, "bytes_in", (double)rec->bytes_in) ||
	    !cJSON_AddNumberToObject(o, "bytes_out", (double)rec->bytes_out))
		goto out;
	if ((text = cJSON_PrintUnformatted(o)) == NULL)
		goto out;
	n = strlen(text);
	if ((line = malloc(n + 2)) != NULL) {
		memcpy(line, text, n);
		line[n] = '\n';
		line[n + 1] = '\0';
	}
out:
	cJSON_Delete(o);
	free(text);
	return line;
}

int audit_write(struct audit *a, const struct audit_record *rec)
{
	char when[80], *target, *line = NULL;
	int rc = -1;

	CHECK_OBJ(a, AUDIT_MAGIC);
	iso_time(rec->time_ms, when, sizeof(when));
	if ((target = audit_mask_target(rec->target)) == NULL)
		goto out;
	if (a->journal) {
		rc = write_journal(rec, when, target) < 0 ? -1 : 0;
	} else if ((line = json_line(rec, when, target)) != NULL) {
		size_t n = strlen(line);
		ssize_t w;

		/* One write: O_APPEND places it whole at the end. */
		do
			w = write(a->fd, line, n);
		while (w < 0 && errno == EINTR);
		rc = w == (ssize_t)n ? 0 : -1;
	}
out:
	if (rc < 0)
		atomic_fetch_add(&a->errors, 1);
	free(line);
	free(target);
	return rc;
}
