/*
 * tls: certificates for libmicrohttpd's GnuTLS, swapped on reload.
 *
 * GnuTLS's certificate callback takes no argument of ours, so the chain
 * in use is one process-wide pointer (one listener per process).  A
 * reload publishes a new chain with one atomic store; the old one stays
 * allocated until tls_free(), since sessions that shook hands with it may
 * still refer to it (reloads are rare; each chain is a few KiB).
 */
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "tls.h"

#define MAX_CHAIN 16

struct chain {
	gnutls_pcert_st pcert[MAX_CHAIN];
	unsigned n;
	gnutls_privkey_t key;
	struct chain *retired; /* older chains, kept until tls_free() */
};

struct tls {
	unsigned magic;
#define TLS_MAGIC 0x71c5e0a3u
	const struct config *cfg;
	char *client_ca;      /* PEM, or NULL */
	struct chain *chains; /* every chain loaded, newest first */
};

static _Atomic(struct chain *) in_use;

static void chain_free(struct chain *c)
{
	for (unsigned i = 0; i < c->n; i++)
		gnutls_pcert_deinit(&c->pcert[i]);
	if (c->key != NULL)
		gnutls_privkey_deinit(c->key);
	free(c);
}

/* Whether key signs what the certificate's public key verifies. */
static int key_matches(gnutls_privkey_t key, gnutls_pcert_st *cert)
{
	static const unsigned char probe[] = "kaleidod: does this key belong to this certificate?";
	gnutls_datum_t data = { (unsigned char *)probe, sizeof(probe) - 1 }, sig = { NULL, 0 };
	int pk = gnutls_privkey_get_pk_algorithm(key, NULL), ok;
	gnutls_sign_algorithm_t algo =
		gnutls_pk_to_sign((gnutls_pk_algorithm_t)pk, GNUTLS_DIG_SHA256);

	if (gnutls_privkey_sign_data2(key, algo, 0, &data, &sig) < 0)
		return 0;
	ok = gnutls_pubkey_verify_data2(cert->pubkey, algo, 0, &data, &sig) >= 0;
	gnutls_free(sig.data);
	return ok;
}

/* The chain and key from their files; NULL with why in err. */
static struct chain *chain_load(const char *cert_file, const char *key_file, char *err,
				size_t errlen)
{
	gnutls_datum_t certs = { NULL, 0 }, key = { NULL, 0 };
	struct chain *c = calloc(1, sizeof(*c));
	int rc;

	if (c == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if ((rc = gnutls_load_file(cert_file, &certs)) < 0) {
		snprintf(err, errlen, "tls_cert %s: %s", cert_file, gnutls_strerror(rc));
		goto fail;
	}
	if ((rc = gnutls_load_file(key_file, &key)) < 0) {
		snprintf(err, errlen, "tls_key %s: %s", key_file, gnutls_strerror(rc));
		goto fail;
	}
	c->n = MAX_CHAIN;
	if ((rc = gnutls_pcert_list_import_x509_raw(c->pcert, &c->n, &certs, GNUTLS_X509_FMT_PEM,
						    0)) < 0) {
		c->n = 0;
		snprintf(err, errlen, "tls_cert %s: not a PEM certificate chain (at most %d): %s",
			 cert_file, MAX_CHAIN, gnutls_strerror(rc));
		goto fail;
	}
	if ((rc = gnutls_privkey_init(&c->key)) < 0 ||
	    (rc = gnutls_privkey_import_x509_raw(c->key, &key, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
		snprintf(err, errlen, "tls_key %s: not an unencrypted PEM private key: %s",
			 key_file, gnutls_strerror(rc));
		goto fail;
	}
	if (!key_matches(c->key, &c->pcert[0])) {
		snprintf(err, errlen, "tls_key %s does not belong to the first certificate of %s",
			 key_file, cert_file);
		goto fail;
	}
	gnutls_free(certs.data);
	if (key.data != NULL)
		explicit_bzero(key.data, key.size);
	gnutls_free(key.data);
	return c;
fail:
	gnutls_free(certs.data);
	if (key.data != NULL)
		explicit_bzero(key.data, key.size);
	gnutls_free(key.data);
	chain_free(c);
	return NULL;
}

/* gnutls_certificate_retrieve_function2: the chain in use. */
static int retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
		    const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
		    gnutls_pcert_st **pcert, unsigned int *pcert_length, gnutls_privkey_t *pkey)
{
	struct chain *c = atomic_load(&in_use);

	(void)session;
	(void)req_ca_dn;
	(void)nreqs;
	(void)pk_algos;
	(void)pk_algos_length;
	if (c == NULL)
		return -1;
	*pcert = c->pcert;
	*pcert_length = c->n;
	*pkey = c->key;
	return 0;
}

struct tls *tls_new(const struct config *cfg, char *err, size_t errlen)
{
	struct tls *t;
	gnutls_datum_t ca = { NULL, 0 };
	gnutls_priority_t prio;
	const char *where = NULL;
	int rc;

	err[0] = '\0';
	if (cfg->tls_cert == NULL)
		return NULL;
	/* A bad priority string fails here, with its place, not in libmicrohttpd. */
	if ((rc = gnutls_priority_init(&prio, cfg->tls_priorities, &where)) < 0) {
		snprintf(err, errlen, "tls_priorities: %s at \"%s\"", gnutls_strerror(rc),
			 where ? where : "");
		return NULL;
	}
	gnutls_priority_deinit(prio);
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	INIT_OBJ(t, TLS_MAGIC);
	t->cfg = cfg;
	if (cfg->tls_client_ca != NULL) {
		gnutls_x509_crt_t *list = NULL;
		unsigned n = 0;

		if ((rc = gnutls_load_file(cfg->tls_client_ca, &ca)) < 0 ||
		    (rc = gnutls_x509_crt_list_import2(&list, &n, &ca, GNUTLS_X509_FMT_PEM, 0)) <
			    0 ||
		    n == 0) {
			snprintf(err, errlen, "tls_client_ca %s: not PEM certificates: %s",
				 cfg->tls_client_ca, rc < 0 ? gnutls_strerror(rc) : "none in it");
			gnutls_free(ca.data);
			tls_free(&t);
			return NULL;
		}
		for (unsigned i = 0; i < n; i++)
			gnutls_x509_crt_deinit(list[i]);
		gnutls_free(list);
		t->client_ca = strndup((const char *)ca.data, ca.size);
		gnutls_free(ca.data);
		if (t->client_ca == NULL) {
			snprintf(err, errlen, "out of memory");
			tls_free(&t);
			return NULL;
		}
	}
	if ((t->chains = chain_load(cfg->tls_cert, cfg->tls_key, err, errlen)) == NULL) {
		tls_free(&t);
		return NULL;
	}
	atomic_store(&in_use, t->chains);
	return t;
}

int tls_reload(struct tls *t, char *err, size_t errlen)
{
	struct chain *c;

	CHECK_OBJ(t, TLS_MAGIC);
	if ((c = chain_load(t->cfg->tls_cert, t->cfg->tls_key, err, errlen)) == NULL)
		return -1;
	c->retired = t->chains;
	t->chains = c;
	atomic_store(&in_use, c);
	return 0;
}

void tls_free(struct tls **tp)
{
	struct tls *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	CHECK_OBJ(t, TLS_MAGIC);
	atomic_store(&in_use, NULL);
	while (t->chains != NULL) {
		struct chain *next = t->chains->retired;

		chain_free(t->chains);
		t->chains = next;
	}
	free(t->client_ca);
	FINI_OBJ(t);
	free(t);
}

const char *tls_priorities(const struct tls *t)
{
	CHECK_OBJ(t, TLS_MAGIC);
	return t->cfg->tls_priorities;
}

void *tls_cert_callback(const struct tls *t)
{
	CHECK_OBJ(t, TLS_MAGIC);
	return (void *)(gnutls_certificate_retrieve_function2 *)retrieve;
}

const char *tls_client_ca(const struct tls *t)
{
	CHECK_OBJ(t, TLS_MAGIC);
	return t->client_ca;
}

enum tls_client tls_check_client(const struct tls *t, struct MHD_Connection *conn, char *subject,
				 size_t subjectlen)
{
	const union MHD_ConnectionInfo *ci;
	gnutls_session_t s;
	const gnutls_datum_t *peers;
	unsigned n = 0, status = 0;
	gnutls_x509_crt_t crt;
	size_t len = subjectlen;

	CHECK_OBJ(t, TLS_MAGIC);
	subject[0] = '\0';
	if (t->client_ca == NULL)
		return TLS_CLIENT_NONE;
	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	if (ci == NULL || (s = (gnutls_session_t)ci->tls_session) == NULL ||
	    (peers = gnutls_certificate_get_peers(s, &n)) == NULL || n == 0)
		return t->cfg->tls_client_required ? TLS_CLIENT_MISSING : TLS_CLIENT_NONE;
	/* Against the CA given to libmicrohttpd (MHD_OPTION_HTTPS_MEM_TRUST):
	 * signature, validity dates, key usage. */
	if (gnutls_certificate_verify_peers2(s, &status) < 0 || status != 0)
		return TLS_CLIENT_INVALID;
	if (gnutls_x509_crt_init(&crt) == 0) {
		if (gnutls_x509_crt_import(crt, &peers[0], GNUTLS_X509_FMT_DER) < 0 ||
		    gnutls_x509_crt_get_dn(crt, subject, &len) < 0)
			subject[0] = '\0';
		gnutls_x509_crt_deinit(crt);
	}
	return TLS_CLIENT_VERIFIED;
}
