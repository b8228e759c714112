/*
 * ceiling: the fastest answer libmicrohttpd can give on this machine, for
 * tests/bench/run.  It serves fixed bodies from memory, one per path, with
 * the threading settings kaleidod uses (daemon/front.c, since issue 8): N
 * threads, each running its own libmicrohttpd daemon in external mode
 * (MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, no internal polling thread) on a
 * dup() of the one listening socket, and each looping poll() on its daemon's
 * epoll fd with the timeout from MHD_get_timeout() (capped at 1 s), then
 * MHD_run().  The connection limit is the total divided by N, as in kaleidod;
 * the timeout and the per-connection memory limit are kaleidod's too.
 * kaleidod's cache-hit throughput is reported as a fraction of this one.
 *
 * Why not MHD_USE_INTERNAL_POLLING_THREAD (issue 8): libmicrohttpd 0.9.75's
 * internal epoll loop calls epoll_wait() again, with the same blocking
 * timeout, whenever one call returned exactly 128 events, so with exactly
 * 128/256/... connections ready at once the thread sleeps until an unrelated
 * event arrives.  MHD_run() passes a timeout of 0 there and never blocks.
 * -i keeps the old internal-thread set-up, to show that cliff.
 *
 * Usage: ceiling [-m KIB] [-t THREADS] [-c CONNS] [-i] FD PATH=FILE [...]
 *   -m    per-connection memory limit in KiB (default 64, as kaleidod had
 *         when this was written; keep it equal to daemon/front.c's)
 *   -t    serving threads (default: kaleidod's default, one per core but
 *         one, at least one)
 *   -c    connection limit in all (default 512, kaleidod's default), split
 *         evenly over the threads
 *   -i    the set-up before issue 8: one daemon with
 *         MHD_USE_INTERNAL_POLLING_THREAD and a thread pool of THREADS
 *   FD    a listening TCP socket inherited from the caller
 *   PATH  a request path (exact match, query ignored); FILE holds its body
 * Any other path answers 404.  It prints "READY" on stdout once serving and
 * stops on SIGTERM or SIGINT.
 *
 * Each response object is made once at start and queued again and again
 * (MHD counts references).  It is queued on the second call of the access
 * handler, never the first: libmicrohttpd 0.9.75 answers a response queued on
 * the first call with "Connection: close", which costs keep-alive and about
 * four fifths of the throughput.
 *
 * Built by tests/bench/run:  cc -O2 ceiling.c $(pkg-config --cflags --libs
 * libmicrohttpd) -lpthread
 */
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ROUTES 8
#define MAX_THREADS 256
/* The longest a serving thread sleeps in poll() without looking at its
 * daemon, as kaleidod caps it. */
#define POLL_CAP_MS 1000

struct route {
	char path[256];
	struct MHD_Response *resp;
};

static struct route routes[MAX_ROUTES];
static int nroutes;
static struct MHD_Response *notfound;
static volatile sig_atomic_t stop;
static char first_call_marker;
/* Readable once the serving threads are to stop (written by main). */
static int stop_pipe[2] = { -1, -1 };

struct worker {
	pthread_t thread;
	struct MHD_Daemon *d;
	int epoll_fd;
};

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* Reads the whole file at path; returns a malloc'd buffer (caller frees) and
 * its length in *len, or NULL. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	if (f == NULL)
		return NULL;
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
		goto fail;
	if ((buf = malloc((size_t)n + 1)) == NULL)
		goto fail;
	if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)
		goto fail;
	fclose(f);
	*len = (size_t)n;
	return buf;
fail:
	free(buf);
	fclose(f);
	return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	int i;

	(void)cls;
	(void)method;
	(void)version;
	(void)upload_data;
	if (*con_cls == NULL) {
		/* First call: headers only.  Queueing now would close the connection. */
		*con_cls = &first_call_marker;
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		*upload_data_size = 0;
		return MHD_YES;
	}
	for (i = 0; i < nroutes; i++)
		if (strcmp(url, routes[i].path) == 0)
			return MHD_queue_response(conn, MHD_HTTP_OK, routes[i].resp);
	return MHD_queue_response(conn, MHD_HTTP_NOT_FOUND, notfound);
}

/* One serving thread: sleep in poll() on the daemon's epoll fd until it has
 * events or its next connection timeout is due, then let MHD_run() (which
 * calls epoll_wait() with a timeout of 0) do the work. */
static void *serve(void *arg)
{
	struct worker *w = arg;
	struct pollfd p[2];

	p[0].fd = w->epoll_fd;
	p[0].events = POLLIN;
	p[1].fd = stop_pipe[0];
	p[1].events = POLLIN;
	for (;;) {
		MHD_UNSIGNED_LONG_LONG to;
		int ms = POLL_CAP_MS;

		if (MHD_get_timeout(w->d, &to) == MHD_YES && to < POLL_CAP_MS)
			ms = (int)to;
		p[0].revents = p[1].revents = 0;
		if (poll(p, 2, ms) < 0 && errno != EINTR) {
			fprintf(stderr, "ceiling: poll: %s\n", strerror(errno));
			break;
		}
		if (p[1].revents != 0)
			break;
		if (MHD_run(w->d) != MHD_YES) {
			fprintf(stderr, "ceiling: MHD_run failed\n");
			break;
		}
	}
	return NULL;
}

static long number(const char *opt, const char *arg, long min, long max)
{
	char *end;
	long v = strtol(arg, &end, 10);

	if (*end != '\0' || end == arg || v < min || v > max) {
		fprintf(stderr, "ceiling: bad %s '%s'\n", opt, arg);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	static struct worker workers[MAX_THREADS];
	struct MHD_Daemon *legacy = NULL;
	struct sigaction sa;
	sigset_t block, old;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	long threads = ncpu > 2 ? ncpu - 1 : 1;
	long conns = 512;
	int internal = 0, started = 0;
	size_t pool = 64 * 1024;
	long fd;
	int i = 1, k;

	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "-i") == 0) {
			internal = 1;
			i++;
			continue;
		}
		if (i + 1 >= argc)
			break;
		if (strcmp(argv[i], "-m") == 0)
			pool = (size_t)number("-m", argv[i + 1], 4, 1 << 20) * 1024;
		else if (strcmp(argv[i], "-t") == 0)
			threads = number("-t", argv[i + 1], 1, MAX_THREADS);
		else if (strcmp(argv[i], "-c") == 0)
			conns = number("-c", argv[i + 1], 1, 1 << 20);
		else
			break;
		i += 2;
	}
	if (argc < i + 2 || argv[i][0] == '-') {
		fprintf(stderr, "usage: ceiling [-m KIB] [-t THREADS] [-c CONNS] [-i] FD "
				"PATH=FILE [PATH=FILE ...]\n");
		return 2;
	}
	fd = number("FD", argv[i], 0, 1 << 30);
	if (conns < threads)
		conns = threads;
	for (i++; i < argc && nroutes < MAX_ROUTES; i++) {
		char *eq = strchr(argv[i], '=');
		size_t len;
		char *body;

		if (eq == NULL || (size_t)(eq - argv[i]) >= sizeof(routes[0].path)) {
			fprintf(stderr, "ceiling: bad route '%s' (want PATH=FILE)\n", argv[i]);
			return 2;
		}
		memcpy(routes[nroutes].path, argv[i], (size_t)(eq - argv[i]));
		if ((body = slurp(eq + 1, &len)) == NULL) {
			fprintf(stderr, "ceiling: cannot read %s: %s\n", eq + 1, strerror(errno));
			return 1;
		}
		/* The response keeps the buffer for the life of the process. */
		routes[nroutes].resp =
			MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
		if (routes[nroutes].resp == NULL ||
		    MHD_add_response_header(routes[nroutes].resp, "Content-Type",
					    "application/json") != MHD_YES) {
			fprintf(stderr, "ceiling: cannot make a response\n");
			return 1;
		}
		nroutes++;
	}
	notfound = MHD_create_response_from_buffer(2, "{}", MHD_RESPMEM_PERSISTENT);
	if (notfound == NULL)
		return 1;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* Blocked here, so the serving threads never take them; sigsuspend below
	 * does. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &old);

	if (internal) {
		legacy = MHD_start_daemon(
			MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME,
			0, NULL, NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET, (int)fd,
			MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads, MHD_OPTION_CONNECTION_LIMIT,
			(unsigned)conns, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
			MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool, MHD_OPTION_END);
		if (legacy == NULL) {
			fprintf(stderr, "ceiling: libmicrohttpd refused to start\n");
			return 1;
		}
	} else {
		/* The daemons share one open file description: accept() on it must
		 * not block a thread that lost the race for a new connection. */
		int fl = fcntl((int)fd, F_GETFL);

		if (fl < 0 || fcntl((int)fd, F_SETFL, fl | O_NONBLOCK) != 0 ||
		    pipe(stop_pipe) != 0) {
			fprintf(stderr, "ceiling: %s\n", strerror(errno));
			return 1;
		}
		for (k = 0; k < threads; k++) {
			struct worker *w = &workers[k];
			const union MHD_DaemonInfo *info;
			/* Each daemon closes its listening socket when it stops. */
			int lfd = k == 0 ? (int)fd : dup((int)fd);

			if (lfd < 0) {
				fprintf(stderr, "ceiling: dup: %s\n", strerror(errno));
				return 1;
			}
			w->d = MHD_start_daemon(
				MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, on_request,
				NULL, MHD_OPTION_LISTEN_SOCKET, lfd, MHD_OPTION_CONNECTION_LIMIT,
				(unsigned)(conns / threads), MHD_OPTION_CONNECTION_TIMEOUT,
				(unsigned)60, MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool,
				MHD_OPTION_END);
			info = w->d ? MHD_get_daemon_info(w->d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
			if (info == NULL) {
				fprintf(stderr, "ceiling: libmicrohttpd refused to start\n");
				return 1;
			}
			w->epoll_fd = info->epoll_fd;
			if (pthread_create(&w->thread, NULL, serve, w) != 0) {
				fprintf(stderr, "ceiling: cannot start a thread\n");
				return 1;
			}
			started++;
		}
	}
	printf("READY\n");
	fflush(stdout);
	while (!stop)
		sigsuspend(&old);
	if (legacy != NULL)
		MHD_stop_daemon(legacy);
	if (started > 0 && write(stop_pipe[1], "x", 1) != 1)
		return 1;
	for (k = 0; k < started; k++) {
		pthread_join(workers[k].thread, NULL);
		MHD_stop_daemon(workers[k].d);
	}
	for (i = 0; i < nroutes; i++)
		MHD_destroy_response(routes[i].resp);
	MHD_destroy_response(notfound);
	return 0;
}
