/*
 * ipcount: chained buckets keyed by the 16 bytes of an IPv6 address
 * (IPv4 as IPv4-mapped).
 */
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "check.h"
#include "ipcount.h"

#define SHARDS 16
#define BUCKETS 256 /* per shard */

struct node {
	struct node *next;
	unsigned char addr[16];
	unsigned n;
};

struct shard {
	pthread_mutex_t lock;
	struct node *b[BUCKETS];
};

struct ipcount {
	unsigned magic;
#define IPCOUNT_MAGIC 0x19c0417eu
	struct shard s[SHARDS];
};

struct ipcount *ipcount_new(void)
{
	struct ipcount *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	INIT_OBJ(t, IPCOUNT_MAGIC);
	for (int i = 0; i < SHARDS; i++)
		pthread_mutex_init(&t->s[i].lock, NULL);
	return t;
}

void ipcount_free(struct ipcount **tp)
{
	struct ipcount *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	CHECK_OBJ(t, IPCOUNT_MAGIC);
	for (int i = 0; i < SHARDS; i++) {
		for (int j = 0; j < BUCKETS; j++)
			while (t->s[i].b[j] != NULL) {
				struct node *n = t->s[i].b[j];

				t->s[i].b[j] = n->next;
				free(n);
			}
		pthread_mutex_destroy(&t->s[i].lock);
	}
	FINI_OBJ(t);
	free(t);
}

/* sa as 16 bytes; 0, or -1 when it is no IP address. */
static int key_of(const struct sockaddr *sa, unsigned char key[16])
{
	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;

		memset(key, 0, 10);
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &in->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
		return 0;
	}
	return -1;
}

static uint32_t hash(const unsigned char key[16])
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	return h;
}

unsigned ipcount_open(struct ipcount *t, const struct sockaddr *sa)
{
	unsigned char key[16];
	struct shard *sh;
	struct node **b, *n;
	unsigned count = 0;
	uint32_t h;

	CHECK_OBJ(t, IPCOUNT_MAGIC);
	if (key_of(sa, key) < 0)
		return 0;
	h = hash(key);
	sh = &t->s[h % SHARDS];
	b = &sh->b[(h / SHARDS) % BUCKETS];
	pthread_mutex_lock(&sh->lock);
	for (n = *b; n != NULL && memcmp(n->addr, key, 16) != 0; n = n->next)
		;
	if (n == NULL && (n = calloc(1, sizeof(*n))) != NULL) {
		memcpy(n->addr, key, 16);
		n->next = *b;
		*b = n;
	}
	if (n != NULL)
		count = ++n->n;
	pthread_mutex_unlock(&sh->lock);
	return count;
}

void ipcount_close(struct ipcount *t, const struct sockaddr *sa)
{
	unsigned char key[16];
	struct shard *sh;
	struct node **l;
	uint32_t h;

	CHECK_OBJ(t, IPCOUNT_MAGIC);
	if (key_of(sa, key) < 0)
		return;
	h = hash(key);
	sh = &t->s[h % SHARDS];
	pthread_mutex_lock(&sh->lock);
	for (l = &sh->b[(h / SHARDS) % BUCKETS]; *l != NULL; l = &(*l)->next) {
		if (memcmp((*l)->addr, key, 16) != 0)
			continue;
		ASSERT((*l)->n > 0);
		if (--(*l)->n == 0) {
			struct node *gone = *l;

			*l = gone->next;
			free(gone);
		}
		break;
	}
	pthread_mutex_unlock(&sh->lock);
}
