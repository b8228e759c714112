/*
 * coherence: the generations an instance knows, and what the cluster's
 * messages and catch-ups ask of it.  See coherence.h.
 */
#include "coherence.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define COH_MAGIC 0xc0e4e2ceu
#define COH_MAX 32

struct coh {
	unsigned magic;
	int n;                                    /* families; index n is the purges' generation */
	char *names[COH_MAX + 1];                 /* ours */
	char known[COH_MAX + 1][COH_GEN_MAX + 1]; /* "": none yet */
	unsigned long long bumped[COH_MAX + 1];   /* our highest published count, this epoch */
	char *epoch;                              /* NULL: no catch-up yet in this process */
	char origin[COH_ORIGIN_LEN + 1];
};

struct coh *coh_new(int nfamilies, const char *const *names, const char *origin)
{
	struct coh *c;

	ASSERT(nfamilies >= 0 && nfamilies <= COH_MAX);
	AN(origin);
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	INIT_OBJ(c, COH_MAGIC);
	c->n = nfamilies;
	snprintf(c->origin, sizeof(c->origin), "%s", origin);
	for (int i = 0; i <= nfamilies; i++) {
		c->names[i] = strdup(i < nfamilies ? names[i] : COH_PURGES);
		if (c->names[i] == NULL) {
			coh_free(&c);
			return NULL;
		}
	}
	return c;
}

void coh_free(struct coh **cp)
{
	struct coh *c = *cp;

	if (c == NULL)
		return;
	*cp = NULL;
	CHECK_OBJ(c, COH_MAGIC);
	for (int i = 0; i <= c->n; i++)
		free(c->names[i]);
	free(c->epoch);
	FINI_OBJ(c);
	free(c);
}

int coh_count(const struct coh *c)
{
	CHECK_OBJ(c, COH_MAGIC);
	return c->n + 1;
}

const char *coh_name(const struct coh *c, int i)
{
	CHECK_OBJ(c, COH_MAGIC);
	ASSERT(i >= 0 && i <= c->n);
	return c->names[i];
}

/* A generation as the script writes it: "COUNT:NONCE", at most COH_GEN_MAX
 * bytes of digits, lower-case letters and ':'.  0, or -1. */
static int check_gen(const char *s, size_t len)
{
	if (len == 0 || len > COH_GEN_MAX)
		return -1;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') || s[i] == ':'))
			return -1;
	return 0;
}

static void set_known(struct coh *c, int i, const char *g, size_t len)
{
	memcpy(c->known[i], g, len);
	c->known[i][len] = '\0';
}

/* The next space-separated word of [*p, end): its start and length. */
static int word(const char **p, const char *end, const char **w, size_t *wl)
{
	const char *sp = memchr(*p, ' ', (size_t)(end - *p));

	if (sp == NULL || sp == *p)
		return -1;
	*w = *p;
	*wl = (size_t)(sp - *p);
	*p = sp + 1;
	return 0;
}

int coh_message(struct coh *c, const char *msg, size_t len, struct coh_action *out)
{
	const char *p = msg, *end = msg + len, *verb, *gen, *origin;
	size_t vl, gl, ol, rest;
	int idx = -1, mine;

	CHECK_OBJ(c, COH_MAGIC);
	out->verb = COH_NONE;
	out->family = -1;
	out->what = NULL;
	if (msg == NULL || word(&p, end, &verb, &vl) < 0 || word(&p, end, &gen, &gl) < 0 ||
	    word(&p, end, &origin, &ol) < 0 || check_gen(gen, gl) < 0 || p >= end ||
	    memchr(p, '\0', (size_t)(end - p)) != NULL)
		return -1;
	rest = (size_t)(end - p);
	mine = ol == strlen(c->origin) && memcmp(origin, c->origin, ol) == 0;
	if (vl == 3 && memcmp(verb, "inv", 3) == 0) {
		for (int i = 0; i < c->n; i++)
			if (strlen(c->names[i]) == rest && memcmp(c->names[i], p, rest) == 0)
				idx = i;
		if (idx < 0)
			return 0; /* a family this instance does not have: nothing of it here */
		set_known(c, idx, gen, gl);
		if (!mine) {
			out->verb = COH_INVALIDATE;
			out->family = idx;
		}
		return 0;
	}
	if (vl == 5 && memcmp(verb, "purge", 5) == 0) {
		if (*p != '/')
			return -1;
		set_known(c, c->n, gen, gl);
		if (!mine) {
			out->verb = COH_PURGE;
			out->what = p; /* up to the message's end, which the caller terminated */
		}
		return 0;
	}
	return -1;
}

unsigned long long coh_gen_count(const char *g)
{
	unsigned long long n = 0;

	if (g == NULL || check_gen(g, strlen(g)) < 0)
		return 0;
	for (; *g >= '0' && *g <= '9'; g++)
		n = n > (ULLONG_MAX - 9) / 10 ? ULLONG_MAX :
						n * 10 + (unsigned long long)(*g - '0');
	return n;
}

uint32_t coh_rewound(const struct coh *c, const char *epoch, const char *const *gens)
{
	uint32_t all = c->n >= 32 ? UINT32_MAX : (1u << c->n) - 1, out = 0;

	CHECK_OBJ(c, COH_MAGIC);
	if (c->epoch == NULL || epoch == NULL || strcmp(c->epoch, epoch) != 0)
		return 0; /* a new epoch: everything is dropped anyway */
	for (int i = 0; i <= c->n; i++) {
		unsigned long long seen = coh_gen_count(c->known[i]);

		if (coh_gen_count(gens[i]) >= (c->bumped[i] > seen ? c->bumped[i] : seen))
			continue;
		if (i == c->n)
			return all;
		out |= 1u << i;
	}
	return out;
}

void coh_bumped(struct coh *c, int i, const char *gen)
{
	CHECK_OBJ(c, COH_MAGIC);
	ASSERT(i >= 0 && i <= c->n);
	if (coh_gen_count(gen) > c->bumped[i])
		c->bumped[i] = coh_gen_count(gen);
}

int coh_catchup(struct coh *c, const char *epoch, const char *const *gens, uint32_t *drop,
		int *purge_all)
{
	int all, dropped = 0;
	const char *now[COH_MAX + 1];

	CHECK_OBJ(c, COH_MAGIC);
	*drop = 0;
	*purge_all = 0;
	for (int i = 0; i <= c->n; i++) {
		now[i] = gens[i] != NULL ? gens[i] : "";
		if (now[i][0] != '\0' && check_gen(now[i], strlen(now[i])) < 0)
			now[i] = "?"; /* not ours to read: moved, as far as we can tell */
	}
	all = c->epoch == NULL || epoch == NULL || strcmp(c->epoch, epoch) != 0;
	for (int i = 0; i < c->n; i++) {
		if (all || strcmp(now[i], c->known[i]) != 0) {
			*drop |= 1u << i;
			dropped++;
		}
		set_known(c, i, now[i], strlen(now[i]));
	}
	if (all || strcmp(now[c->n], c->known[c->n]) != 0)
		*purge_all = 1;
	set_known(c, c->n, now[c->n], strlen(now[c->n]));
	if (epoch != NULL && (c->epoch == NULL || strcmp(c->epoch, epoch) != 0)) {
		char *e = strdup(epoch);

		memset(c->bumped, 0, sizeof(c->bumped)); /* counts of another epoch */
		if (e != NULL) {
			free(c->epoch);
			c->epoch = e;
		}
		/* else: still unknown, so the next catch-up drops all again: safe */
	}
	return dropped;
}
