/*
 * throttle: one window and one release pace per scope; the last scope is
 * "everything" and applies to every request besides its own family's.
 */
#include "throttle.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "check.h"

struct scope {
	double until;   /* the window's end; 0: none yet */
	double next_at; /* during the ramp: when the next request may leave */
};

struct throttle {
	pthread_mutex_t lock;
	int n;      /* families; scopes[n] is everything */
	double gap; /* s between releases during a ramp */
	struct scope scopes[];
};

struct throttle *throttle_new(int nscopes, unsigned rate)
{
	struct throttle *t;

	ASSERT(nscopes >= 0);
	t = calloc(1, sizeof(*t) + ((size_t)nscopes + 1) * sizeof(t->scopes[0]));
	if (t == NULL)
		return NULL;
	pthread_mutex_init(&t->lock, NULL);
	t->n = nscopes;
	t->gap = 1.0 / (rate > 0 ? rate : 1);
	return t;
}

void throttle_free(struct throttle **t)
{
	if (*t == NULL)
		return;
	pthread_mutex_destroy(&(*t)->lock);
	free(*t);
	*t = NULL;
}

double throttle_retry_after(const char *value, time_t now_wall)
{
	double secs = -1;

	if (value != NULL) {
		size_t n = strspn(value, "0123456789");

		if (n > 0 && value[n] == '\0')
			secs = n > 6 ? THROTTLE_MAX : (double)atol(value);
		else if (n == 0) {
			/* libcurl's date parser takes the three forms RFC 9110
			 * 5.6.7 asks recipients to accept. */
			time_t at = curl_getdate(value, NULL);

			if (at != (time_t)-1)
				secs = at > now_wall ? (double)(at - now_wall) : 0;
		}
	}
	if (secs < 0)
		return THROTTLE_DEFAULT;
	if (secs < 1)
		return 1;
	return secs > THROTTLE_MAX ? THROTTLE_MAX : secs;
}

static struct scope *scope_of(struct throttle *t, int scope)
{
	return &t->scopes[scope >= 0 && scope < t->n ? scope : t->n];
}

void throttle_note(struct throttle *t, int scope, double now, double secs)
{
	struct scope *s;

	pthread_mutex_lock(&t->lock);
	s = scope_of(t, scope);
	if (now + secs > s->until)
		s->until = now + secs;
	pthread_mutex_unlock(&t->lock);
}

/* Lock held. */
static double left_locked(struct throttle *t, int scope, double now)
{
	const struct scope *s = scope_of(t, scope), *all = &t->scopes[t->n];
	double until = s->until > all->until ? s->until : all->until;

	return until > now ? until - now : 0;
}

double throttle_left(struct throttle *t, int scope, double now)
{
	double left;

	pthread_mutex_lock(&t->lock);
	left = left_locked(t, scope, now);
	pthread_mutex_unlock(&t->lock);
	return left;
}

/* Whether s is in the paced release after its window. */
static int ramping(const struct scope *s, double now)
{
	return s->until > 0 && now >= s->until && now < s->until + THROTTLE_RAMP;
}

enum throttle_verdict throttle_check(struct throttle *t, int scope, double now, double *left)
{
	struct scope *s = scope_of(t, scope), *all = &t->scopes[t->n];
	struct scope *mine[2] = { s, all };
	double wait = 0;

	pthread_mutex_lock(&t->lock);
	*left = left_locked(t, scope, now);
	if (*left > 0) {
		pthread_mutex_unlock(&t->lock);
		return THROTTLE_REFUSE;
	}
	for (int i = 0; i < (s == all ? 1 : 2); i++)
		if (ramping(mine[i], now) && mine[i]->next_at > now &&
		    mine[i]->next_at - now > wait)
			wait = mine[i]->next_at - now;
	if (wait > 0) {
		pthread_mutex_unlock(&t->lock);
		*left = wait;
		return THROTTLE_WAIT;
	}
	for (int i = 0; i < (s == all ? 1 : 2); i++)
		if (ramping(mine[i], now))
			mine[i]->next_at = now + t->gap;
	pthread_mutex_unlock(&t->lock);
	return THROTTLE_GO;
}
