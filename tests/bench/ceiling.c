/*
 * ceiling: the fastest answer libmicrohttpd can give on this machine, for
 * tests/bench/run.  It serves fixed bodies from memory, one per path, with
 * the threading settings kaleidod uses (daemon/front.c): internal polling
 * thread, epoll, suspend/resume allowed, a thread pool of one thread per
 * core, the same connection limit, timeout and per-connection memory limit.
 * kaleidod's cache-hit throughput is reported as a fraction of this one.
 *
 * Usage: ceiling [-m KIB] FD PATH=FILE [PATH=FILE ...]
 *   -m    per-connection memory limit in KiB (default 64, as kaleidod had
 *         when this was written; keep it equal to daemon/front.c's)
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
 * libmicrohttpd)
 */
#include <errno.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ROUTES 8

struct route {
	char path[256];
	struct MHD_Response *resp;
};

static struct route routes[MAX_ROUTES];
static int nroutes;
static struct MHD_Response *notfound;
static volatile sig_atomic_t stop;
static char first_call_marker;

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

int main(int argc, char **argv)
{
	struct MHD_Daemon *d;
	struct sigaction sa;
	sigset_t block, old;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	size_t pool = 64 * 1024;
	char *end;
	long fd, kib;
	int i = 1;

	if (argc > 2 && strcmp(argv[1], "-m") == 0) {
		kib = strtol(argv[2], &end, 10);
		if (*end != '\0' || kib < 4) {
			fprintf(stderr, "ceiling: bad -m '%s'\n", argv[2]);
			return 2;
		}
		pool = (size_t)kib * 1024;
		i = 3;
	}
	if (argc < i + 2) {
		fprintf(stderr, "usage: ceiling [-m KIB] FD PATH=FILE [PATH=FILE ...]\n");
		return 2;
	}
	fd = strtol(argv[i], &end, 10);
	if (*end != '\0' || fd < 0) {
		fprintf(stderr, "ceiling: bad FD '%s'\n", argv[i]);
		return 2;
	}
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
	/* Blocked here, so MHD's threads never take them; sigsuspend below does. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &old);

	d = MHD_start_daemon(
		MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, NULL,
		NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET, (int)fd,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(ncpu > 2 ? ncpu - 1 : 1),
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)512, MHD_OPTION_CONNECTION_TIMEOUT,
		(unsigned)60, MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool, MHD_OPTION_END);
	if (d == NULL) {
		fprintf(stderr, "ceiling: libmicrohttpd refused to start\n");
		return 1;
	}
	printf("READY\n");
	fflush(stdout);
	while (!stop)
		sigsuspend(&old);
	MHD_stop_daemon(d);
	for (i = 0; i < nroutes; i++)
		MHD_destroy_response(routes[i].resp);
	MHD_destroy_response(notfound);
	return 0;
}
