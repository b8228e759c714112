/*
 * versions: asked of each library at run time (versions.h).
 */
#include "versions.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <sqlite3.h>
#include <zlib.h>

#include "kdbuild.h"

void versions_get(struct versions *v)
{
	const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);

	v->kaleidod = PACKAGE_VERSION;
	v->libmicrohttpd = MHD_get_version();
	v->libcurl = cv->version;
	v->libcurl_tls = cv->ssl_version != NULL ? cv->ssl_version : "none";
	v->sqlite = sqlite3_libversion();
	v->cjson = cJSON_Version();
	v->zlib = zlibVersion();
	v->gnutls = gnutls_check_version(NULL);
}
