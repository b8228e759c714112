/*
 * serve: one libmicrohttpd daemon per thread, each driven by its own loop.
 *
 * Why not libmicrohttpd's thread pool: in 0.9.75, MHD_epoll() drains the
 * epoll set with `while (128 == num_events) epoll_wait(..., timeout)`, and
 * its polling threads pass a blocking timeout (-1, or the next connection
 * timeout).  When 128, 256, ... events are ready at once, the call after the
 * last full batch blocks with those connections already read but not yet
 * answered, until an unrelated event arrives: 100 req/s instead of 100,000
 * at exactly 128*k busy connections, and closed clients left in CLOSE-WAIT.
 * MHD_run() passes a timeout of 0, so that loop drains and returns; this
 * module does the waiting instead: poll() on the daemon's epoll descriptor
 * and on a wake-up eventfd, with libmicrohttpd's own timeout.
 *
 * Ownership: each daemon is touched only by its thread while the threads
 * run (quiescing included), and by serve_free() once they have stopped.
 * The exception is MHD_resume_connection(), which libmicrohttpd allows from
 * any thread; but in external mode it only marks the connection (0.9.75
 * drops its inter-thread channel there), so whoever resumes must also call
 * serve_wake() for the connection's thread.
 */
#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"

#define SERVE_MAGIC 0x53525645u /* "SRVE" */
#define TICK_MS 1000

struct sthread {
	struct serve *s;
	unsigned idx;
	struct MHD_Daemon *d;
	int epfd;        /* the daemon's epoll set (libmicrohttpd's) */
	int wake;        /* eventfd: quiesce or stop */
	int quiesced_fd; /* ours once quiesced; closed after the daemon */
	int started;     /* the pthread exists */
	pthread_t tid;
	_Atomic int64_t beat_ms; /* when the loop last came round (serve_stalled()) */
};

struct serve {
	unsigned magic;
	struct serve_params p;
	atomic_int stop, quiesce;
	pthread_mutex_t lock; /* quiesce acknowledgements */
	pthread_cond_t cond;
	unsigned quiesced;
	struct sthread *t;
};

static _Thread_local int my_thread = -1;

int serve_thread(void)
{
	return my_thread;
}

static void wake(struct sthread *t)
{
	uint64_t one = 1;

	/* Only fails when the counter is saturated: it is awake anyway. */
	(void)!write(t->wake, &one, sizeof(one));
}

static void quiesce_mine(struct sthread *t)
{
	struct serve *s = t->s;

	t->quiesced_fd = MHD_quiesce_daemon(t->d);
	pthread_mutex_lock(&s->lock);
	s->quiesced++;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

static void *loop(void *arg)
{
	struct sthread *t = arg;
	struct serve *s = t->s;
	int64_t next_tick = clock_mono_ms() + TICK_MS;
	int quiesced = 0;
	char name[16];

	snprintf(name, sizeof(name), "kd-serve-%u", t->idx);
	/* Named for top -H, gdb and the watchdog test: which thread is which. */
	pthread_setname_np(pthread_self(), name);

	my_thread = (int)t->idx;
	atomic_store(&t->beat_ms, next_tick - TICK_MS);
	while (!atomic_load(&s->stop)) {
		struct pollfd pfd[2] = { { .fd = t->epfd, .events = POLLIN },
					 { .fd = t->wake, .events = POLLIN } };
		MHD_UNSIGNED_LONG_LONG to;
		int64_t now = clock_mono_ms();
		int ms = now >= next_tick ? 0 : (int)(next_tick - now);

		if (!quiesced && atomic_load(&s->quiesce)) {
			quiesce_mine(t);
			quiesced = 1;
		}
		if (MHD_get_timeout(t->d, &to) == MHD_YES && to < (MHD_UNSIGNED_LONG_LONG)ms)
			ms = (int)to;
		if (poll(pfd, 2, ms) > 0 && (pfd[1].revents & POLLIN)) {
			uint64_t v;

			(void)!read(t->wake, &v, sizeof(v));
		}
		/* Accepts, reads, answers, times out: never waits. */
		MHD_run(t->d);
		now = clock_mono_ms();
		atomic_store_explicit(&t->beat_ms, now, memory_order_relaxed);
		if (now >= next_tick) {
			if (s->p.tick != NULL)
				s->p.tick(s->p.arg, t->idx);
			next_tick = now + TICK_MS;
		}
	}
	return NULL;
}

double serve_stalled(struct serve *s)
{
	int64_t now = clock_mono_ms(), worst = 0;

	for (unsigned i = 0; i < s->p.threads; i++) {
		int64_t beat = atomic_load_explicit(&s->t[i].beat_ms, memory_order_relaxed);

		/* A thread not started yet has beat 0: not stalled, absent. */
		if (s->t[i].started && beat > 0 && now - beat > worst)
			worst = now - beat;
	}
	return (double)worst / 1e3;
}

static void teardown(struct serve *s)
{
	atomic_store(&s->stop, 1);
	for (unsigned i = 0; i < s->p.threads; i++)
		if (s->t[i].started)
			wake(&s->t[i]);
	for (unsigned i = 0; i < s->p.threads; i++)
		if (s->t[i].started)
			pthread_join(s->t[i].tid, NULL);
	for (unsigned i = 0; i < s->p.threads; i++) {
		struct sthread *t = &s->t[i];

		if (t->d != NULL)
			MHD_stop_daemon(t->d);
		if (t->quiesced_fd >= 0)
			close(t->quiesced_fd);
		if (t->wake >= 0)
			close(t->wake);
	}
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s->t);
	FINI_OBJ(s);
	free(s);
}

struct serve *serve_new(const struct serve_params *p, char *err, size_t errlen)
{
	struct serve *s = calloc(1, sizeof(*s));
	unsigned per, extra;

	ASSERT(p->threads >= 1 && p->start != NULL);
	if (s == NULL || (s->t = calloc(p->threads, sizeof(*s->t))) == NULL) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	INIT_OBJ(s, SERVE_MAGIC);
	s->p = *p;
	atomic_init(&s->stop, 0);
	atomic_init(&s->quiesce, 0);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	for (unsigned i = 0; i < p->threads; i++)
		s->t[i].wake = s->t[i].quiesced_fd = -1;
	/* The limit is shared out as libmicrohttpd's own pool does it: a
	 * thread at its share stops accepting, and the others take the rest. */
	per = p->conn_limit / p->threads;
	extra = p->conn_limit % p->threads;
	for (unsigned i = 0; i < p->threads; i++) {
		struct sthread *t = &s->t[i];
		const union MHD_DaemonInfo *di;
		unsigned lim;
		int fd;

		t->s = s;
		t->idx = i;
		if ((t->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
			snprintf(err, errlen, "eventfd: %s", strerror(errno));
			goto fail;
		}
		if ((fd = fcntl(p->listen_fd, F_DUPFD_CLOEXEC, 3)) < 0) {
			snprintf(err, errlen, "dup of the listening socket: %s", strerror(errno));
			goto fail;
		}
		lim = per + (i < extra ? 1 : 0);
		t->d = p->start(p->arg, i, fd, lim > 0 ? lim : 1);
		if (t->d == NULL) {
			/* Not closed here: some of libmicrohttpd's failure paths
			 * close it already, and we exit anyway. */
			snprintf(err, errlen, "libmicrohttpd refused to start (see the debug log)");
			goto fail;
		}
		if ((di = MHD_get_daemon_info(t->d, MHD_DAEMON_INFO_EPOLL_FD)) == NULL) {
			snprintf(err, errlen, "libmicrohttpd has no epoll set");
			goto fail;
		}
		t->epfd = di->epoll_fd;
	}
	for (unsigned i = 0; i < p->threads; i++) {
		int rc = pthread_create(&s->t[i].tid, NULL, loop, &s->t[i]);

		if (rc != 0) {
			snprintf(err, errlen, "cannot start a server thread: %s", strerror(rc));
			goto fail;
		}
		s->t[i].started = 1;
	}
	return s;
fail:
	teardown(s);
	return NULL;
}

void serve_wake(struct serve *s, int thread)
{
	CHECK_OBJ(s, SERVE_MAGIC);
	ASSERT(thread >= 0 && (unsigned)thread < s->p.threads);
	wake(&s->t[thread]);
}

void serve_quiesce(struct serve *s)
{
	if (s == NULL)
		return;
	CHECK_OBJ(s, SERVE_MAGIC);
	if (atomic_exchange(&s->quiesce, 1))
		return;
	for (unsigned i = 0; i < s->p.threads; i++)
		wake(&s->t[i]);
	pthread_mutex_lock(&s->lock);
	while (s->quiesced < s->p.threads)
		pthread_cond_wait(&s->cond, &s->lock);
	pthread_mutex_unlock(&s->lock);
}

void serve_free(struct serve **sp)
{
	struct serve *s = *sp;

	if (s == NULL)
		return;
	CHECK_OBJ(s, SERVE_MAGIC);
	teardown(s);
	*sp = NULL;
}
