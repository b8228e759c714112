/*
 * fuzz_cache_key: the query canonicaliser and the cache key
 * (policy_cache_key(), policy_canonical_query()), and the path rules that
 * pick a family and what a write invalidates (policy_family(),
 * policy_invalidates()), over the default families plus a few nested ones.
 *
 * Input: up to four parts separated by NUL bytes: target, method, upstream
 * URL, client id.  Missing parts take the daemon's usual values.
 *
 * Invariants:
 *  - the key reads back: "v1\n", then URL, client id and method each as
 *    "LEN:BYTES\n", then the target's path, '?', and the canonical query;
 *    so it holds no LF but those four, and no CR, unless an input did;
 *  - the canonical query holds exactly the non-empty parameters, sorted by
 *    name, those of one name in their order, and canonicalising it again
 *    changes nothing; with no name repeated, the target with its parameters
 *    reversed has the same key;
 *  - policy_family() reads only pathlen bytes and names a family one of
 *    whose prefixes covers the path (the longest; a "*" segment matches
 *    any one segment) and none of whose excepts does, or -1 when none does;
 *  - a write invalidates the family a read of the same path would use;
 *    GET and HEAD invalidate nothing.
 */
#include "config.h"
#include "fuzz.h"
#include "policy.h"

static struct config *cfg;
static struct policy *pol;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const sets[][3] = {
		{ "family.records", "paths", "/records /records/" },
		{ "family.exports", "paths", "/records/export" },
		{ "family.exports", "invalidated_by", "/push/imports /records" },
		{ "family.deep", "paths", "/a/b/c/ /a/b" },
		{ "family.wild", "paths", "/a/*/c /x/*/*/y" },
		{ "family.wild", "except", "/a/b/c/d /x/*/z" },
	};
	char err[256];

	if ((cfg = config_new()) == NULL)
		abort();
	for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++)
		if (config_set(cfg, sets[i][0], sets[i][1], sets[i][2], NULL, err, sizeof(err)) <
		    0) {
			fprintf(stderr, "fuzz_cache_key: %s\n", err);
			abort();
		}
	if ((pol = policy_new(cfg)) == NULL)
		abort();
	return 0;
}

/* The next '/'-separated segment of s[*i..len) (the first of an absolute
 * path is empty); 0 when none is left. */
static int next_segment(const char *s, size_t len, size_t *i, const char **seg, size_t *seglen)
{
	if (*i > len)
		return 0;
	*seg = s + *i;
	*seglen = 0;
	while (*i + *seglen < len && s[*i + *seglen] != '/')
		(*seglen)++;
	*i += *seglen + 1;
	return 1;
}

/* Length of prefix (trailing '/' ignored) when it covers path, else 0:
 * segment by segment, a "*" segment matching any one non-empty one. */
static size_t covers(const char *prefix, const char *path, size_t pathlen)
{
	size_t plen = strlen(prefix), pi = 0, qi = 0, pl, ql;
	const char *ps, *qs;

	while (plen > 0 && prefix[plen - 1] == '/')
		plen--;
	while (next_segment(prefix, plen, &pi, &ps, &pl)) {
		if (!next_segment(path, pathlen, &qi, &qs, &ql))
			return 0;
		if (pl == 1 && ps[0] == '*' ? ql == 0 : pl != ql || memcmp(ps, qs, pl) != 0)
			return 0;
	}
	return plen + 1;
}

static size_t best_of(char *const *prefixes, int n, const char *path, size_t pathlen)
{
	size_t best = 0;

	for (int j = 0; j < n; j++) {
		size_t l = covers(prefixes[j], path, pathlen);

		if (l > best)
			best = l;
	}
	return best;
}

static size_t best_cover(int fam, const char *path, size_t pathlen)
{
	return best_of(cfg->families[fam].paths, cfg->families[fam].npaths, path, pathlen);
}

/* What fam offers a read of path: nothing when one of its excepts covers it. */
static size_t read_cover(int fam, const char *path, size_t pathlen)
{
	const struct config_family *f = &cfg->families[fam];

	return best_of(f->except, f->nexcept, path, pathlen) > 0 ? 0 :
								   best_cover(fam, path, pathlen);
}

static void check_paths(const char *path, size_t pathlen)
{
	char *exact = fuzz_bytes(path, pathlen); /* no NUL: reads stop at pathlen */
	int fam = policy_family(pol, exact, pathlen);
	uint32_t post = policy_invalidates(pol, "POST", exact, pathlen);
	size_t mine = fam >= 0 ? read_cover(fam, path, pathlen) : 0;

	FUZZ_CHECK(fam >= -1 && fam < policy_family_count(pol), "family %d", fam);
	FUZZ_CHECK(fam < 0 || mine > 0, "family %d does not cover the path", fam);
	for (int i = 0; i < policy_family_count(pol); i++) {
		size_t l = best_cover(i, path, pathlen);

		FUZZ_CHECK(read_cover(i, path, pathlen) <= mine,
			   "family %d covers longer than the one chosen (%d)", i, fam);
		FUZZ_CHECK(l == 0 || (post & (UINT32_C(1) << i)), "a write misses family %d", i);
	}
	FUZZ_CHECK(fam < 0 || (post & (UINT32_C(1) << fam)), "a write keeps family %d", fam);
	FUZZ_CHECK(policy_invalidates(pol, "GET", exact, pathlen) == 0, "GET invalidates");
	FUZZ_CHECK(policy_invalidates(pol, "HEAD", exact, pathlen) == 0, "HEAD invalidates");
	free(exact);
}

struct param {
	const char *s;
	size_t len, namelen;
};

/* The non-empty '&'-separated parameters of q; *n of them, malloc'd. */
static struct param *params(const char *q, size_t len, size_t *n)
{
	struct param *v = fuzz_xmalloc((len + 1) * sizeof(*v));
	size_t start = 0;

	*n = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && q[i] != '&')
			continue;
		if (i > start) {
			const char *eq = memchr(q + start, '=', i - start);

			v[*n].s = q + start;
			v[*n].len = i - start;
			v[*n].namelen = eq != NULL ? (size_t)(eq - (q + start)) : i - start;
			(*n)++;
		}
		start = i + 1;
	}
	return v;
}

static int name_cmp(const struct param *a, const struct param *b)
{
	size_t n = a->namelen < b->namelen ? a->namelen : b->namelen;
	int c = memcmp(a->s, b->s, n);

	return c != 0 ? c : (a->namelen > b->namelen) - (a->namelen < b->namelen);
}

static void check_canonical(const char *query, size_t qlen, const char *canon)
{
	size_t clen = strlen(canon), n, m;
	struct param *in = params(query, qlen, &n), *out = params(canon, clen, &m);
	char *again;
	int *used = calloc(n + 1, sizeof(*used));
	size_t *from = calloc(m + 1, sizeof(*from));

	if (used == NULL || from == NULL)
		abort();
	FUZZ_CHECK(m == n, "%zu parameters became %zu", n, m);
	FUZZ_CHECK(clen == 0 || (canon[0] != '&' && canon[clen - 1] != '&' &&
				 strstr(canon, "&&") == NULL),
		   "an empty parameter kept: \"%s\"", canon);
	for (size_t i = 0; i < m; i++) {
		size_t j;

		if (i > 0)
			FUZZ_CHECK(name_cmp(&out[i - 1], &out[i]) <= 0, "not sorted at %zu", i);
		/* the same parameters, each once: match the first unused equal one */
		for (j = 0; j < n; j++)
			if (!used[j] && in[j].len == out[i].len &&
			    memcmp(in[j].s, out[i].s, out[i].len) == 0)
				break;
		FUZZ_CHECK(j < n, "parameter %zu is not one of the query's", i);
		used[j] = 1;
		from[i] = j;
		/* one name's parameters keep the query's order */
		if (i > 0 && name_cmp(&out[i - 1], &out[i]) == 0)
			FUZZ_CHECK(from[i - 1] < from[i], "repeated name reordered at %zu", i);
	}
	again = policy_canonical_query(canon, clen);
	if (again == NULL)
		abort();
	FUZZ_CHECK(strcmp(again, canon) == 0, "canonical twice: \"%s\" then \"%s\"", canon, again);
	free(again);
	free(from);
	free(used);
	free(in);
	free(out);
}

/* "LEN:BYTES\n" at *p for want; advances *p. */
static void expect_field(const char **p, const char *want, const char *what)
{
	char head[32];
	size_t wl = strlen(want);
	int hl = snprintf(head, sizeof(head), "%zu:", wl);

	FUZZ_CHECK(strncmp(*p, head, (size_t)hl) == 0, "%s: length prefix", what);
	*p += hl;
	FUZZ_CHECK(strncmp(*p, want, wl) == 0 && (*p)[wl] == '\n', "%s: bytes", what);
	*p += wl + 1;
}

static size_t count_char(const char *s, char c)
{
	size_t n = 0;

	for (; *s != '\0'; s++)
		n += *s == c;
	return n;
}

/* The target with the '&'-separated parts of its query in reverse order. */
static char *reversed_target(const char *target)
{
	const char *q = strchr(target, '?'), *end;
	size_t off;
	char *out;

	if (q == NULL)
		return strdup(target);
	out = fuzz_xmalloc(strlen(target) + 1);
	off = (size_t)(q - target) + 1;
	memcpy(out, target, off);
	end = q + 1 + strlen(q + 1);
	for (;;) {
		const char *start = end;

		while (start > q + 1 && start[-1] != '&')
			start--;
		memcpy(out + off, start, (size_t)(end - start));
		off += (size_t)(end - start);
		if (start == q + 1)
			break;
		out[off++] = '&';
		end = start - 1;
	}
	out[off] = '\0';
	return out;
}

static int param_qsort_cmp(const void *a, const void *b)
{
	return name_cmp(a, b);
}

/* Whether two non-empty parameters of the query share a name. */
static int repeated_names(const char *query, size_t len)
{
	size_t n;
	struct param *v = params(query, len, &n);
	int rep = 0;

	qsort(v, n, sizeof(*v), param_qsort_cmp);
	for (size_t i = 1; i < n && !rep; i++)
		rep = name_cmp(&v[i - 1], &v[i]) == 0;
	free(v);
	return rep;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *target = fuzz_part(data, size, 0), *method = fuzz_part(data, size, 1);
	char *url = fuzz_part(data, size, 2), *id = fuzz_part(data, size, 3);
	const char *u = url != NULL ? url : "https://api.kaleidoscope.bio";
	const char *m = method != NULL ? method : "GET";
	const char *q = strchr(target, '?'), *p;
	size_t pathlen = q != NULL ? (size_t)(q - target) : strlen(target);
	char *key, *key2, *rev, *canon;
	size_t nl;

	check_paths(target, pathlen);

	key = policy_cache_key(u, id, m, target);
	if (key == NULL)
		abort();
	p = key;
	FUZZ_CHECK(strncmp(p, "v1\n", 3) == 0, "no version");
	p += 3;
	expect_field(&p, u, "url");
	expect_field(&p, id != NULL ? id : "", "client id");
	expect_field(&p, m, "method");
	FUZZ_CHECK(strncmp(p, target, pathlen) == 0 && p[pathlen] == '?', "path");
	canon = policy_canonical_query(q != NULL ? q + 1 : "", q != NULL ? strlen(q + 1) : 0);
	if (canon == NULL)
		abort();
	FUZZ_CHECK(strcmp(p + pathlen + 1, canon) == 0, "query is not the canonical one");
	check_canonical(q != NULL ? q + 1 : "", q != NULL ? strlen(q + 1) : 0, canon);

	nl = count_char(u, '\n') + count_char(id != NULL ? id : "", '\n') + count_char(m, '\n') +
	     count_char(target, '\n');
	FUZZ_CHECK(count_char(key, '\n') == 4 + nl, "stray LF in the key");
	FUZZ_CHECK(count_char(key, '\r') == count_char(u, '\r') +
						    count_char(id != NULL ? id : "", '\r') +
						    count_char(m, '\r') + count_char(target, '\r'),
		   "stray CR in the key");

	/* Order matters between parameters of one name (a list), not otherwise. */
	if ((rev = reversed_target(target)) == NULL)
		abort();
	if ((key2 = policy_cache_key(u, id, m, rev)) == NULL)
		abort();
	if (q == NULL || !repeated_names(q + 1, strlen(q + 1)))
		FUZZ_CHECK(strcmp(key, key2) == 0, "parameter order changes the key:\n%s\n%s",
			   target, rev);

	free(key);
	free(key2);
	free(rev);
	free(canon);
	free(target);
	free(method);
	free(url);
	free(id);
	return 0;
}
