/*
 * loginguard: an open-addressed table of address buckets.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "loginguard.h"

#define PROBES 8
#define IP_MAX 46 /* INET6_ADDRSTRLEN */

struct slot {
	char ip[IP_MAX];
	double credit; /* failures still allowed */
	double last;   /* when credit was last brought up to date */
};

struct loginguard {
	unsigned magic;
#define LOGINGUARD_MAGIC 0x1a9e5d02u
	pthread_mutex_t lock;
	struct slot s[LOGINGUARD_SLOTS];
};

struct loginguard *loginguard_new(void)
{
	struct loginguard *g = calloc(1, sizeof(*g));

	if (g == NULL)
		return NULL;
	INIT_OBJ(g, LOGINGUARD_MAGIC);
	pthread_mutex_init(&g->lock, NULL);
	return g;
}

void loginguard_free(struct loginguard **gp)
{
	struct loginguard *g = *gp;

	if (g == NULL)
		return;
	*gp = NULL;
	CHECK_OBJ(g, LOGINGUARD_MAGIC);
	pthread_mutex_destroy(&g->lock);
	FINI_OBJ(g);
	free(g);
}

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* ip's slot brought up to now, or NULL when ip has none (create: make one,
 * taking the longest-quiet of the candidates when all are used). */
static struct slot *find(struct loginguard *g, const char *ip, double now, int create)
{
	uint32_t h = hash(ip);
	struct slot *quiet = NULL, *sl;

	for (int i = 0; i < PROBES; i++) {
		sl = &g->s[(h + (uint32_t)i) % LOGINGUARD_SLOTS];
		if (sl->ip[0] != '\0' && strcmp(sl->ip, ip) == 0) {
			if (now > sl->last) {
				sl->credit += (now - sl->last) * LOGINGUARD_RATE;
				if (sl->credit > LOGINGUARD_BURST)
					sl->credit = LOGINGUARD_BURST;
				sl->last = now;
			}
			return sl;
		}
		if (quiet == NULL || sl->ip[0] == '\0' ||
		    (quiet->ip[0] != '\0' && sl->last < quiet->last))
			quiet = sl;
	}
	if (!create)
		return NULL;
	strncpy(quiet->ip, ip, IP_MAX - 1);
	quiet->ip[IP_MAX - 1] = '\0';
	quiet->credit = LOGINGUARD_BURST;
	quiet->last = now;
	return quiet;
}

double loginguard_check(struct loginguard *g, const char *ip, double now)
{
	struct slot *sl;
	double wait = 0;

	CHECK_OBJ(g, LOGINGUARD_MAGIC);
	pthread_mutex_lock(&g->lock);
	if ((sl = find(g, ip, now, 0)) != NULL && sl->credit < 1)
		wait = (1 - sl->credit) / LOGINGUARD_RATE;
	pthread_mutex_unlock(&g->lock);
	return wait;
}

void loginguard_failed(struct loginguard *g, const char *ip, double now)
{
	struct slot *sl;

	CHECK_OBJ(g, LOGINGUARD_MAGIC);
	pthread_mutex_lock(&g->lock);
	sl = find(g, ip, now, 1);
	sl->credit = sl->credit >= 1 ? sl->credit - 1 : 0;
	pthread_mutex_unlock(&g->lock);
}
