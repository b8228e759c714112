/*
 * tls: TLS on the listener, through libmicrohttpd's GnuTLS.
 *
 * The certificate chain and key come from PEM files, read at start and
 * again on SIGHUP: libmicrohttpd asks for them at every handshake through
 * its certificate callback (MHD_OPTION_HTTPS_CERT_CALLBACK), so a new
 * certificate serves new connections at once while the open ones carry
 * on.  Optional client certificates are checked against a CA file, and
 * may be required.
 */
#ifndef KD_TLS_H
#define KD_TLS_H

#include <stddef.h>

struct config;
struct MHD_Connection;
struct tls;

/* NULL with err "" when cfg names no certificate (plain HTTP); NULL with
 * why in err when the files do not load. */
struct tls *tls_new(const struct config *cfg, char *err, size_t errlen);
/* Reads the certificate and key files again; on error the ones in use stay.
 * 0, or -1 with why in err. */
int tls_reload(struct tls *t, char *err, size_t errlen);
/* Only after every libmicrohttpd daemon using it stopped. */
void tls_free(struct tls **t);

/* What libmicrohttpd needs: MHD_USE_TLS, then these option values. */
const char *tls_priorities(const struct tls *t);
void *tls_cert_callback(const struct tls *t);
const char *tls_client_ca(const struct tls *t); /* PEM text, or NULL */

enum tls_client {
	TLS_CLIENT_NONE,     /* no certificate, and none is required */
	TLS_CLIENT_VERIFIED, /* a certificate the CA signed */
	TLS_CLIENT_MISSING,  /* none, and one is required */
	TLS_CLIENT_INVALID,  /* one the CA did not sign, expired, ... */
};

/* The client certificate of conn's session, checked; its subject DN into
 * subject when verified. */
enum tls_client tls_check_client(const struct tls *t, struct MHD_Connection *conn, char *subject,
				 size_t subjectlen);

#endif
