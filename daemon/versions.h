/*
 * versions: kaleidod's version and those of the libraries this process
 * runs with (not the ones it was built against), for --version, the
 * build_info metric and the status page.
 */
#ifndef KD_VERSIONS_H
#define KD_VERSIONS_H

struct versions {
	const char *kaleidod, *libmicrohttpd, *libcurl, *libcurl_tls, *sqlite, *cjson, *zlib,
		*gnutls;
};

/* Static strings; never NULL ("none" for libcurl without TLS). */
void versions_get(struct versions *v);

#endif
