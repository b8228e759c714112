/*
 * collect: the sink (struct up_sink) that keeps an upstream answer in
 * memory for the cache, up to a limit, and says at its end what it got.
 *
 * A flight's fetch has it alone: nobody streams that answer, so a body
 * over the limit ends the transfer.  A client's own streamed fetch that
 * may be stored has it in a tee with the ring the client reads: over the
 * limit it only drops out.  Either way done() runs once, at the end.
 */
#ifndef KD_COLLECT_H
#define KD_COLLECT_H

#include <stddef.h>

#include "upstream.h"

struct hdr;

enum collect_end {
	COLLECT_WHOLE,     /* ended without an error, body within the limit */
	COLLECT_TOO_LARGE, /* the body outgrew the limit: nothing of it kept */
	COLLECT_FAILED,    /* no answer, or one cut short: err and detail */
};

/* What done() is told; valid during the call only. */
struct collected {
	enum collect_end end;
	long status;               /* COLLECT_WHOLE */
	const struct hdr *headers; /* COLLECT_WHOLE: as the API sent them */
	const void *body;          /* COLLECT_WHOLE: never NULL */
	size_t len;
	/* COLLECT_WHOLE: the end was marked (Content-Length, chunked, no body
	 * by status); an answer ended by a close may be cut short, so it is
	 * handed on but never stored. */
	int framed;
	enum up_error err;  /* COLLECT_FAILED */
	const char *detail; /* COLLECT_FAILED: in words */
};

/*
 * Fills *out with a collecting sink for upstream_start().  done(arg, c)
 * runs once, on the upstream worker with no lock held, when the transfer
 * ends; free_arg(arg) (may be NULL) when the transfer lets the sink go.
 * 0, or -1 on ENOMEM: then nothing is owned, arg stays the caller's.
 */
int collect_sink(size_t max, void (*done)(void *arg, const struct collected *c),
		 void (*free_arg)(void *arg), void *arg, struct up_sink *out);

#endif
