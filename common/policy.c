/*
 * policy: what the cache may keep and for how long; no I/O.
 *
 * The families come from the configuration and are copied here, so a policy
 * outlives the config it was made from.  Everything else is pure functions
 * over strings, kept apart from the cache and the HTTP front so the rules can
 * be tested without either.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "config.h"
#include "hdr.h"
#include "policy.h"

struct family {
	char *name;
	char **paths;
	int npaths;
	char **inv;
	int ninv;
	char **except;
	int nexcept;
	unsigned ttl;
};

struct policy {
	struct family *f;
	int n;
};

static void free_strv(char **v, int n)
{
	for (int i = 0; i < n && v != NULL; i++)
		free(v[i]);
	free(v);
}

static char **dup_strv(char *const *src, int n)
{
	char **v = calloc(n > 0 ? (size_t)n : 1, sizeof(*v));

	if (v == NULL)
		goto fail;
	for (int i = 0; i < n; i++)
		if ((v[i] = strdup(src[i])) == NULL)
			goto fail;
	return v;
fail:
	free_strv(v, n);
	return NULL;
}

void policy_free(struct policy **p)
{
	if (p == NULL || *p == NULL)
		return;
	for (int i = 0; i < (*p)->n; i++) {
		free((*p)->f[i].name);
		free_strv((*p)->f[i].paths, (*p)->f[i].npaths);
		free_strv((*p)->f[i].inv, (*p)->f[i].ninv);
		free_strv((*p)->f[i].except, (*p)->f[i].nexcept);
	}
	free((*p)->f);
	free(*p);
	*p = NULL;
}

/* NULL on ENOMEM.  Families beyond 32 cannot be named in an invalidation
 * mask; config.h caps them well below that. */
struct policy *policy_new(const struct config *cfg)
{
	struct policy *p = calloc(1, sizeof(*p));
	int n = cfg->nfamilies;

	assert(n >= 0 && n <= 32);
	if (p == NULL)
		goto fail;
	if ((p->f = calloc(n > 0 ? (size_t)n : 1, sizeof(*p->f))) == NULL)
		goto fail;
	for (int i = 0; i < n; i++) {
		const struct config_family *cf = &cfg->families[i];
		struct family *f = &p->f[i];

		/* Counted first so policy_free releases whatever was copied. */
		p->n = i + 1;
		f->ttl = cf->ttl;
		if ((f->name = strdup(cf->name)) == NULL ||
		    (f->paths = dup_strv(cf->paths, cf->npaths)) == NULL)
			goto fail;
		f->npaths = cf->npaths;
		if ((f->inv = dup_strv(cf->invalidated_by, cf->ninvalidated_by)) == NULL)
			goto fail;
		f->ninv = cf->ninvalidated_by;
		if ((f->except = dup_strv(cf->except, cf->nexcept)) == NULL)
			goto fail;
		f->nexcept = cf->nexcept;
	}
	return p;
fail:
	policy_free(&p);
	return NULL;
}

int policy_family_count(const struct policy *p)
{
	return p->n;
}

const char *policy_family_name(const struct policy *p, int family)
{
	assert(family >= 0 && family < p->n);
	return p->f[family].name;
}

unsigned policy_family_ttl(const struct policy *p, int family)
{
	assert(family >= 0 && family < p->n);
	return p->f[family].ttl;
}

/*
 * Length of prefix when it covers path: path equals the prefix or continues
 * with '/', where a '*' segment of the prefix stands for any one non-empty
 * segment.  A trailing '/' on the prefix is ignored.  0 when it does not
 * cover (a prefix is never empty).
 */
static size_t covers(const char *prefix, const char *path, size_t pathlen)
{
	size_t plen = strlen(prefix), i = 0, j = 0;

	while (plen > 0 && prefix[plen - 1] == '/')
		plen--;
	while (i < plen) {
		if (prefix[i] == '*' && i > 0 && prefix[i - 1] == '/' &&
		    (i + 1 == plen || prefix[i + 1] == '/')) {
			size_t start = j;

			while (j < pathlen && path[j] != '/')
				j++;
			if (j == start)
				return 0;
			i++;
			continue;
		}
		if (j == pathlen || path[j] != prefix[i])
			return 0;
		i++;
		j++;
	}
	if (j < pathlen && path[j] != '/')
		return 0;
	return plen + 1;
}

static int any_covers(char *const *prefixes, int n, const char *path, size_t pathlen)
{
	for (int i = 0; i < n; i++)
		if (covers(prefixes[i], path, pathlen) > 0)
			return 1;
	return 0;
}

/* The longest covering prefix wins, so a family for "/records/export" can sit
 * beside one for "/records"; on a tie the earlier family wins.  A family's
 * except prefixes take those paths out of it (to the next best, or none). */
int policy_family(const struct policy *p, const char *path, size_t pathlen)
{
	int best = -1;
	size_t bestlen = 0;

	for (int i = 0; i < p->n; i++) {
		if (any_covers(p->f[i].except, p->f[i].nexcept, path, pathlen))
			continue;
		for (int j = 0; j < p->f[i].npaths; j++) {
			size_t l = covers(p->f[i].paths[j], path, pathlen);

			if (l > bestlen) {
				best = i;
				bestlen = l;
			}
		}
	}
	return best;
}

/* Every family with a covering prefix is invalidated, not only the longest
 * match: dropping too much costs a refetch, keeping too much serves stale. */
uint32_t policy_invalidates(const struct policy *p, const char *method, const char *path,
			    size_t pathlen)
{
	uint32_t mask = 0;

	if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
		return 0;
	for (int i = 0; i < p->n; i++)
		if (any_covers(p->f[i].paths, p->f[i].npaths, path, pathlen) ||
		    any_covers(p->f[i].inv, p->f[i].ninv, path, pathlen))
			mask |= UINT32_C(1) << i;
	return mask;
}

/*
 * "v1\n" then URL, client id and method, each as "LEN:BYTES\n", then
 * "PATH?QUERY" with the query canonical.  The length prefixes make the key
 * unambiguous whatever bytes the configured strings hold; "v1" lets a later
 * key format coexist with old rows.
 */
char *policy_cache_key(const char *upstream_url, const char *client_id, const char *method,
		       const char *target)
{
	const char *q = strchr(target, '?');
	size_t pathlen = q ? (size_t)(q - target) : strlen(target);
	char *query = NULL, *key = NULL;
	size_t klen;
	int n;

	if (client_id == NULL)
		client_id = "";
	if ((query = policy_canonical_query(q ? q + 1 : "", q ? strlen(q + 1) : 0)) == NULL)
		goto fail;
	klen = strlen(upstream_url) + strlen(client_id) + strlen(method) + pathlen + strlen(query) +
	       3 * 24 + 8;
	if ((key = malloc(klen)) == NULL)
		goto fail;
	n = snprintf(key, klen, "v1\n%zu:%s\n%zu:%s\n%zu:%s\n%.*s?%s", strlen(upstream_url),
		     upstream_url, strlen(client_id), client_id, strlen(method), method,
		     (int)pathlen, target, query);
	assert(n >= 0 && (size_t)n < klen);
	free(query);
	return key;
fail:
	free(query);
	free(key);
	return NULL;
}

struct param {
	const char *s;
	size_t len;
	size_t namelen;
	size_t order; /* position in the original query, for a stable sort */
};

static int param_cmp(const void *a, const void *b)
{
	const struct param *x = a, *y = b;
	size_t n = x->namelen < y->namelen ? x->namelen : y->namelen;
	int c = memcmp(x->s, y->s, n);

	if (c != 0)
		return c;
	if (x->namelen != y->namelen)
		return x->namelen < y->namelen ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

/* NULL on ENOMEM. */
char *policy_canonical_query(const char *query, size_t len)
{
	struct param *v = NULL;
	size_t n = 0, off = 0, start = 0;
	char *out = NULL;

	/* At most one parameter per '&' plus one. */
	for (size_t i = 0; i < len; i++)
		n += query[i] == '&';
	if ((v = calloc(n + 1, sizeof(*v))) == NULL)
		goto fail;
	n = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && query[i] != '&')
			continue;
		if (i > start) {
			const char *eq = memchr(query + start, '=', i - start);

			v[n].s = query + start;
			v[n].len = i - start;
			v[n].namelen = eq ? (size_t)(eq - v[n].s) : v[n].len;
			v[n].order = n;
			n++;
		}
		start = i + 1;
	}
	qsort(v, n, sizeof(*v), param_cmp);
	if ((out = malloc(len + 1)) == NULL)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			out[off++] = '&';
		memcpy(out + off, v[i].s, v[i].len);
		off += v[i].len;
	}
	out[off] = '\0';
	free(v);
	return out;
fail:
	free(v);
	free(out);
	return NULL;
}

/* RFC 9111 1.2.2: delta-seconds beyond 2^31 count as 2^31. */
#define DELTA_MAX 2147483648L

/* Digits only; -1 when the value is not delta-seconds. */
static long parse_delta(const char *s, size_t len)
{
	long v = 0;

	if (len == 0)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		if (v < DELTA_MAX)
			v = v * 10 + (s[i] - '0');
	}
	return v < DELTA_MAX ? v : DELTA_MAX;
}

/* A repeated age directive keeps the smaller value, the safe reading. */
static void set_age(long *slot, long v)
{
	if (v >= 0 && (*slot < 0 || v < *slot))
		*slot = v;
}

/* max-age and s-maxage: a value that is not delta-seconds (negative, a
 * fraction, missing) makes the answer stale (RFC 9111 4.2.1, 1.2.2). */
static void set_age_or_bad(struct policy_cc *cc, long *slot, const char *val, size_t len)
{
	long v = val != NULL ? parse_delta(val, len) : -1;

	if (v < 0)
		cc->bad_age = 1;
	else
		set_age(slot, v);
}

static int is_ows(char ch)
{
	return ch == ' ' || ch == '\t';
}

static int name_is(const char *s, size_t len, const char *name)
{
	return strlen(name) == len && strncasecmp(s, name, len) == 0;
}

/*
 * Directives are "name" or "name=token" or "name=\"quoted\"".  A quoted value
 * is unescaped into a small buffer: only the numeric ones are read, and a
 * longer value cannot be a number anyway.  Qualified forms
 * (private="Set-Cookie", no-cache="X") count as the unqualified directive:
 * this cache does not strip single fields, so it treats them whole.
 */
void policy_parse_cache_control(const char *value, struct policy_cc *out)
{
	const char *p = value;

	memset(out, 0, sizeof(*out));
	out->max_age = -1;
	out->s_maxage = -1;
	out->stale_while_rev = -1;
	out->stale_if_error = -1;
	if (p == NULL)
		return;
	while (*p != '\0') {
		const char *name, *val = NULL;
		size_t namelen, vallen = 0;
		char buf[32];

		while (*p == ',' || is_ows(*p))
			p++;
		if (*p == '\0')
			break;
		name = p;
		while (*p != '\0' && *p != ',' && *p != '=' && !is_ows(*p))
			p++;
		namelen = (size_t)(p - name);
		while (is_ows(*p))
			p++;
		if (*p == '=') {
			p++;
			while (is_ows(*p))
				p++;
			if (*p == '"') {
				p++;
				while (*p != '\0' && *p != '"') {
					if (*p == '\\' && p[1] != '\0')
						p++;
					if (vallen < sizeof(buf))
						buf[vallen] = *p;
					vallen++;
					p++;
				}
				if (*p == '"')
					p++;
				val = buf;
				if (vallen > sizeof(buf))
					vallen = 0; /* too long to be a number: ignored */
			} else {
				val = p;
				while (*p != '\0' && *p != ',' && !is_ows(*p))
					p++;
				vallen = (size_t)(p - val);
			}
		}
		/* Anything after the directive up to the next comma is junk. */
		while (*p != '\0' && *p != ',')
			p++;

		if (name_is(name, namelen, "no-store"))
			out->no_store = 1;
		else if (name_is(name, namelen, "no-cache"))
			out->no_cache = 1;
		else if (name_is(name, namelen, "only-if-cached"))
			out->only_if_cached = 1;
		else if (name_is(name, namelen, "private"))
			out->private_ = 1;
		else if (name_is(name, namelen, "must-revalidate") ||
			 name_is(name, namelen, "proxy-revalidate"))
			out->must_revalidate = 1;
		else if (name_is(name, namelen, "max-age"))
			set_age_or_bad(out, &out->max_age, val, vallen);
		else if (name_is(name, namelen, "s-maxage"))
			set_age_or_bad(out, &out->s_maxage, val, vallen);
		else if (name_is(name, namelen, "stale-while-revalidate") && val != NULL)
			set_age(&out->stale_while_rev, parse_delta(val, vallen));
		else if (name_is(name, namelen, "stale-if-error") && val != NULL)
			set_age(&out->stale_if_error, parse_delta(val, vallen));
	}
}

unsigned policy_ttl(const struct policy *p, int family, const struct policy_cc *response_cc)
{
	unsigned long ttl;

	if (family < 0 || family >= p->n)
		return 0;
	ttl = p->f[family].ttl;
	if (response_cc == NULL)
		return (unsigned)ttl;
	/* no-cache asks for revalidation on every use, which this cache does
	 * not do yet: not storing is the honest equivalent. */
	if (response_cc->no_store || response_cc->private_ || response_cc->no_cache)
		return 0;
	/* A shared cache obeys s-maxage over max-age (RFC 9111 5.2.2.10). */
	if (response_cc->s_maxage >= 0) {
		if ((unsigned long)response_cc->s_maxage < ttl)
			ttl = (unsigned long)response_cc->s_maxage;
	} else if (response_cc->max_age >= 0) {
		if ((unsigned long)response_cc->max_age < ttl)
			ttl = (unsigned long)response_cc->max_age;
	}
	return (unsigned)ttl;
}

/* An HTTP-date (curl_getdate() reads all three RFC 9110 5.6.7 forms), or -1. */
static int64_t http_date(const char *v)
{
	time_t t;

	if (v == NULL)
		return -1;
	t = curl_getdate(v, NULL);
	return t == (time_t)-1 ? -1 : (int64_t)t;
}

int policy_vary_beyond_key(const char *vary)
{
	while (vary != NULL && *vary != '\0') {
		size_t n;

		vary += strspn(vary, " \t,");
		n = strcspn(vary, " \t,");
		if (n > 0 && !(n == 15 && strncasecmp(vary, "accept-encoding", 15) == 0))
			return 1; /* "*" included */
		vary += n;
	}
	return 0;
}

/* Fields kaleidod sets or replaces itself on the way up: whatever the
 * client sent there did not reach the API, so it cannot select a variant. */
static int own_field(const char *name)
{
	static const char *const own[] = {
		"accept-encoding", "authorization",     "x-kal-authorization", "host",   "via",
		"x-forwarded-for", "x-forwarded-proto", "content-length",      "expect", NULL
	};

	for (int i = 0; own[i] != NULL; i++)
		if (strcasecmp(name, own[i]) == 0)
			return 1;
	return 0;
}

int policy_vary_same(const char *vary, const char *(*get_a)(void *arg, const char *name),
		     void *arg_a, const char *(*get_b)(void *arg, const char *name), void *arg_b)
{
	char name[128];

	while (vary != NULL && *vary != '\0') {
		const char *a, *b;
		size_t n;

		vary += strspn(vary, " \t,");
		n = strcspn(vary, " \t,");
		if (n == 0)
			break;
		if ((n == 1 && vary[0] == '*') || n >= sizeof(name))
			return 0;
		memcpy(name, vary, n);
		name[n] = '\0';
		vary += n;
		if (own_field(name))
			continue;
		a = get_a(arg_a, name);
		b = get_b != NULL ? get_b(arg_b, name) : NULL;
		if ((a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0))
			return 0;
	}
	return 1;
}

int policy_vary_carried(const char *vary, const char *(*get)(void *arg, const char *name),
			void *arg)
{
	return !policy_vary_same(vary, get, arg, NULL, NULL);
}

unsigned policy_age(const struct hdr *h)
{
	const char *v = hdr_get(h, "Age");
	long a = v != NULL ? parse_delta(v, strlen(v)) : -1;

	return a > 0 ? (a < (long)UINT32_MAX ? (unsigned)a : UINT32_MAX) : 0;
}

unsigned policy_answer_ttl(const struct policy *p, int family, const struct hdr *h, int64_t now,
			   unsigned *age)
{
	struct policy_cc cc;
	const char *expires = hdr_get(h, "Expires"), *vary;
	unsigned ttl;

	*age = policy_age(h);
	policy_parse_cache_control(hdr_get(h, "Cache-Control"), &cc);
	vary = hdr_get(h, "Vary");
	if (cc.bad_age || (vary != NULL && strchr(vary, '*') != NULL))
		return 0; /* (other Vary fields: see policy_vary_carried()) */
	ttl = policy_ttl(p, family, &cc);
	if (ttl > 0 && cc.s_maxage < 0 && cc.max_age < 0 && expires != NULL) {
		int64_t exp = http_date(expires), date = http_date(hdr_get(h, "Date"));

		if (date < 0)
			date = now;
		if (exp <= date)
			return 0; /* invalid, or already past: stale */
		if (exp - date < (int64_t)ttl)
			ttl = (unsigned)(exp - date);
	}
	return ttl > *age ? ttl - *age : 0;
}

void policy_stale_limits(const struct hdr *h, unsigned cfg_swr, unsigned cfg_sie, unsigned *swr,
			 unsigned *sie)
{
	struct policy_cc cc;

	policy_parse_cache_control(hdr_get(h, "Cache-Control"), &cc);
	*swr = cfg_swr;
	*sie = cfg_sie;
	if (cc.must_revalidate || cc.s_maxage >= 0) {
		*swr = *sie = 0;
		return;
	}
	if (cc.stale_while_rev >= 0 && (unsigned long)cc.stale_while_rev < *swr)
		*swr = (unsigned)cc.stale_while_rev;
	if (cc.stale_if_error >= 0 && (unsigned long)cc.stale_if_error < *sie)
		*sie = (unsigned)cc.stale_if_error;
}
