/*
 * gz: one-call gzip and gunzip over zlib, for cached bodies.
 *
 * zlib counts in uInt (32 bits) while bodies are size_t, so both directions
 * feed it in slices.  Decompression is strict because the cache trusts its
 * result as the body it stored: whatever does not inflate to exactly the
 * recorded size, in one member with nothing after it, is refused.
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* next_in as a const pointer: the input is never written. */
#define ZLIB_CONST
#include <zlib.h>

#include "gz.h"

/* windowBits for deflateInit2/inflateInit2: 15 plus 16 selects the gzip
 * wrapper (and, for inflate, refuses zlib or raw streams). */
#define GZ_WBITS (MAX_WBITS + 16)
#define GZ_MEMLEVEL 8

/* zlib counts in uInt: these hand it the next slice of a size_t-counted
 * buffer once it has used up the last one. */
static uInt slice(size_t left)
{
	return left > UINT_MAX ? UINT_MAX : (uInt)left;
}

static void feed_in(z_stream *zs, const unsigned char **src, size_t *left)
{
	if (zs->avail_in > 0 || *left == 0)
		return;
	zs->next_in = *src;
	zs->avail_in = slice(*left);
	*src += zs->avail_in;
	*left -= zs->avail_in;
}

static void feed_out(z_stream *zs, unsigned char **dst, size_t *left)
{
	if (zs->avail_out > 0 || *left == 0)
		return;
	zs->next_out = *dst;
	zs->avail_out = slice(*left);
	*dst += zs->avail_out;
	*left -= zs->avail_out;
}

int gz_compress(const void *in, size_t len, int level, void **out, size_t *outlen)
{
	const unsigned char *src = in;
	unsigned char *buf = NULL, *dst, *shrunk;
	size_t in_left = len, out_left, cap;
	z_stream zs;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (level < 1 || level > 9)
		return -1;
	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, level, Z_DEFLATED, GZ_WBITS, GZ_MEMLEVEL, Z_DEFAULT_STRATEGY) != Z_OK)
		return -1;
	/* The bound counts the gzip header and trailer: running out of room
	 * below would be a zlib bug, and fails rather than loops. */
	cap = (size_t)deflateBound(&zs, (uLong)len);
	if ((buf = malloc(cap)) == NULL)
		goto fail;
	dst = buf;
	out_left = cap;
	do {
		feed_in(&zs, &src, &in_left);
		feed_out(&zs, &dst, &out_left);
		rc = deflate(&zs, in_left == 0 ? Z_FINISH : Z_NO_FLUSH);
		if (rc != Z_OK && rc != Z_STREAM_END)
			goto fail;
	} while (rc != Z_STREAM_END);
	*outlen = cap - out_left - zs.avail_out;
	deflateEnd(&zs);
	/* The bound is generous for compressible bodies; give the rest back. */
	if ((shrunk = realloc(buf, *outlen > 0 ? *outlen : 1)) != NULL)
		buf = shrunk;
	*out = buf;
	return 0;
fail:
	deflateEnd(&zs);
	free(buf);
	*outlen = 0;
	return -1;
}

int gz_decompress(const void *in, size_t len, size_t expect, void **out)
{
	const unsigned char *src = in;
	unsigned char *buf = NULL, *dst;
	size_t in_left = len, out_left;
	z_stream zs;
	int rc;

	*out = NULL;
	if (expect == SIZE_MAX)
		return -1;
	/* One byte past expect: where the NUL goes, and where a member that
	 * inflates to more than expect shows itself. */
	if ((buf = malloc(expect + 1)) == NULL)
		return -1;
	dst = buf;
	out_left = expect + 1;
	memset(&zs, 0, sizeof(zs));
	if (inflateInit2(&zs, GZ_WBITS) != Z_OK) {
		free(buf);
		return -1;
	}
	for (;;) {
		feed_in(&zs, &src, &in_left);
		feed_out(&zs, &dst, &out_left);
		rc = inflate(&zs, Z_NO_FLUSH);
		if (rc == Z_STREAM_END)
			break;
		/* Z_BUF_ERROR: no progress possible, because the input ran out
		 * (truncated) or all expect + 1 bytes are written (too long). */
		if (rc != Z_OK)
			goto fail;
	}
	/* inflate has checked the CRC and the length modulo 2^32 by now. */
	if (zs.avail_in != 0 || in_left != 0)
		goto fail;
	if (expect + 1 - out_left - zs.avail_out != expect)
		goto fail;
	inflateEnd(&zs);
	buf[expect] = '\0';
	*out = buf;
	return 0;
fail:
	inflateEnd(&zs);
	free(buf);
	return -1;
}
