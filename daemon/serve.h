/*
 * serve: the threads that run libmicrohttpd.
 *
 * Each serve thread owns one libmicrohttpd daemon in external-epoll mode,
 * all of them on the same listening socket, and drives it with its own
 * loop (poll, then MHD_run).  libmicrohttpd 0.9.75's own polling threads
 * sleep with connections still waiting whenever one epoll_wait() returned
 * exactly 128 events (docs/architecture.md, "Why kaleidod runs its own
 * loop"); MHD_run() never blocks, so that path is never taken.
 *
 * The loop also gives each thread a number (serve_thread()) for state that
 * a thread keeps to itself, and a once-a-second tick to look after it.
 */
#ifndef KD_SERVE_H
#define KD_SERVE_H

#include <stddef.h>

struct MHD_Daemon;
struct serve;

/*
 * Starts one daemon for thread `thread` on listen_fd (a descriptor of its
 * own, which libmicrohttpd closes when stopped), accepting at most
 * conn_limit connections.  Must not use MHD_USE_INTERNAL_POLLING_THREAD.
 * NULL on failure.
 */
typedef struct MHD_Daemon *(*serve_start_fn)(void *arg, unsigned thread, int listen_fd,
					     unsigned conn_limit);
/* Runs on serve thread `thread`, about once a second, between requests. */
typedef void (*serve_tick_fn)(void *arg, unsigned thread);

struct serve_params {
	int listen_fd;       /* bound and listening; stays the caller's */
	unsigned threads;    /* at least 1 */
	unsigned conn_limit; /* over all threads */
	serve_start_fn start;
	serve_tick_fn tick; /* may be NULL */
	void *arg;
};

/* Starts the daemons and their threads.  NULL with a message in err. */
struct serve *serve_new(const struct serve_params *p, char *err, size_t errlen);
/* The calling thread's number, 0 .. threads-1, or -1 outside serve threads. */
int serve_thread(void);
/* Wakes serve thread `thread` to run its daemon: after
 * MHD_resume_connection() from another thread, which in external mode
 * only marks the connection.  Safe from any thread, and from a signal
 * handler. */
void serve_wake(struct serve *s, int thread);
/* Seconds since the slowest serve thread last came round its loop (each
 * does at least once a second, busy or idle): a wedged thread's grows
 * without bound.  Any thread. */
double serve_stalled(struct serve *s);
/* Stops accepting new connections (every thread has stopped when this
 * returns); requests in progress go on. */
void serve_quiesce(struct serve *s);
/* Stops the threads, then the daemons: every suspended connection must have
 * been resumed first (libmicrohttpd aborts otherwise). */
void serve_free(struct serve **s);

#endif
