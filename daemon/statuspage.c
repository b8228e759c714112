/*
 * statuspage: the HTML status page and its script (statuspage.h).
 *
 * Every value that comes from configuration, the API or a log line is
 * escaped; the numbers a test compares with /_kaleidod/stats carry ids
 * (hits, misses, ...) or classes within a family's row (data-family).
 */
#include "statuspage.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "cache.h"
#include "front.h"
#include "log.h"
#include "membuf.h"
#include "objtab.h"
#include "policy.h"
#include "stats.h"
#include "upstream.h"
#include "versions.h"
#include "warm.h"

#define REFRESH_DEFAULT 10
#define FAMILIES_MAX 64

struct page {
	struct membuf mb;
	int oom;
};

static void put(struct page *p, const char *s, size_t n)
{
	if (!p->oom && membuf_append(&p->mb, s, n) < 0)
		p->oom = 1;
}

static void out(struct page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(struct page *p, const char *fmt, ...)
{
	char buf[512], *big = NULL;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(buf)) {
		put(p, buf, (size_t)n);
		return;
	}
	/* Longer than the buffer: never cut a page in the middle of a tag. */
	va_start(ap, fmt);
	n = vasprintf(&big, fmt, ap);
	va_end(ap);
	if (n < 0)
		p->oom = 1;
	else
		put(p, big, (size_t)n);
	free(big);
}

/* Text for an element's content or a quoted attribute. */
static void esc(struct page *p, const char *s)
{
	for (const char *run = s;; s++) {
		const char *ent = NULL;

		switch (*s) {
		case '&':
			ent = "&amp;";
			break;
		case '<':
			ent = "&lt;";
			break;
		case '>':
			ent = "&gt;";
			break;
		case '"':
			ent = "&quot;";
			break;
		case '\'':
			ent = "&#39;";
			break;
		case '\0':
			put(p, run, (size_t)(s - run));
			return;
		default:
			continue;
		}
		put(p, run, (size_t)(s - run));
		put(p, ent, strlen(ent));
		run = s + 1;
	}
}

/* "3 d 4 h", "12 min 5 s", "7 s". */
static void put_age(struct page *p, double seconds)
{
	long long s = seconds > 0 ? (long long)seconds : 0;

	if (s >= 86400)
		out(p, "%lld d %lld h", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		out(p, "%lld h %lld min", s / 3600, s % 3600 / 60);
	else if (s >= 60)
		out(p, "%lld min %lld s", s / 60, s % 60);
	else
		out(p, "%lld s", s);
}

static void put_time(struct page *p, double unix_time)
{
	char buf[40];
	time_t t = (time_t)unix_time;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	out(p, "<time datetime=\"%s\">%s</time>", buf, buf);
}

static unsigned refresh_of(const char *query)
{
	const char *q = query;

	while (q != NULL && *q != '\0') {
		if (strncmp(q, "refresh=", 8) == 0) {
			char *end;
			long v = strtol(q + 8, &end, 10);

			if (end != q + 8 && (*end == '\0' || *end == '&') && v >= 0 && v <= 3600)
				return (unsigned)v;
		}
		q = strchr(q, '&');
		q = q != NULL ? q + 1 : NULL;
	}
	return REFRESH_DEFAULT;
}

static const char style[] =
	"body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:72em}"
	"h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}"
	"dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;margin:0}"
	"dt{color:#666}dd{margin:0}"
	"table{border-collapse:collapse}th,td{padding:.25em .8em;text-align:right;"
	"border-bottom:1px solid #ddd}th:first-child,td:first-child{text-align:left}"
	".ok{color:#176f2c;font-weight:600}.bad{color:#b3261e;font-weight:600}"
	".muted{color:#777}ol{padding-left:1.2em}code{font-size:.95em}";

static void upstream_section(struct page *p, const struct front_deps *d)
{
	struct auth_status st;
	double now = (double)time(NULL);

	upstream_auth_status(d->up, &st);
	out(p, "<h2>Upstream</h2><dl><dt>API</dt><dd id=\"upstream\">");
	esc(p, upstream_url(d->up));
	out(p, "</dd><dt>Auth</dt><dd id=\"auth-state\" class=\"%s\">%s</dd>",
	    st.state == AUTH_OK ? "ok" : "bad", auth_state_name(st.state));
	if (st.failing_since > 0) {
		out(p, "<dt>Failing since</dt><dd id=\"failing-since\">");
		put_time(p, st.failing_since);
		out(p, " (");
		put_age(p, now - st.failing_since);
		out(p, ")</dd>");
	}
	if (st.last_error[0] != '\0') {
		out(p, "<dt>Last error</dt><dd id=\"auth-error\">");
		esc(p, st.last_error);
		out(p, "</dd>");
	}
	if (st.expires_at > now) {
		out(p, "<dt>Token expires in</dt><dd id=\"token-expires\">");
		put_age(p, st.expires_at - now);
		out(p, "</dd>");
	}
	out(p, "</dl>");
}

static void traffic_section(struct page *p, const struct front_deps *d, unsigned conns)
{
	unsigned long long hits = stats_get(d->stats, -1, STATS_HITS),
			   misses = stats_get(d->stats, -1, STATS_MISSES),
			   stale = stats_get(d->stats, -1, STATS_STALE),
			   reval = stats_get(d->stats, -1, STATS_REVALIDATED),
			   looked = hits + misses + stale + reval;

	out(p, "<h2>Traffic</h2><dl><dt>Hit ratio</dt><dd id=\"hit-ratio\">");
	if (looked > 0)
		out(p, "%.1f%%", 100.0 * (double)hits / (double)looked);
	else
		out(p, "<span class=\"muted\">no cacheable requests yet</span>");
	out(p, "</dd><dt>Requests</dt><dd id=\"requests\">%llu</dd>",
	    stats_get(d->stats, -1, STATS_REQUESTS));
	out(p, "<dt>Hits</dt><dd id=\"hits\">%llu</dd><dt>Misses</dt><dd id=\"misses\">%llu</dd>",
	    hits, misses);
	out(p, "<dt>Stale</dt><dd id=\"stale\">%llu</dd>", stale);
	out(p, "<dt>Revalidated</dt><dd id=\"revalidated\">%llu</dd>", reval);
	out(p, "<dt>Connections open</dt><dd id=\"connections\">%u</dd></dl>", conns);
}

struct usage {
	int64_t entries[FAMILIES_MAX], bytes[FAMILIES_MAX];
	const struct policy *policy;
};

static void usage_row(void *arg, const char *family, int64_t entries, int64_t bytes)
{
	struct usage *u = arg;

	for (int f = 0; f < policy_family_count(u->policy) && f < FAMILIES_MAX; f++)
		if (strcmp(policy_family_name(u->policy, f), family) == 0) {
			u->entries[f] = entries;
			u->bytes[f] = bytes;
		}
}

static void families_section(struct page *p, const struct front_deps *d)
{
	struct usage u = { .policy = d->policy };
	int64_t now = (int64_t)time(NULL);

	if (d->cache != NULL)
		cache_usage_by_family(d->cache, usage_row, &u);
	out(p, "<h2>Families</h2><p id=\"purge-result\" role=\"status\"></p>"
	       "<noscript><p class=\"muted\">The purge buttons need JavaScript; or: "
	       "<code>curl -H 'Content-Type: application/json' -d '{\"family\": \"NAME\"}' "
	       "http://HOST/_kaleidod/purge</code></p></noscript>"
	       "<table><thead><tr><th>Family</th><th>Entries</th><th>Bytes</th>"
	       "<th>Base list age</th><th>Hits</th><th>Misses</th><th>Stale</th><th></th>"
	       "</tr></thead><tbody>");
	for (int f = 0; f < policy_family_count(d->policy) && f < FAMILIES_MAX; f++) {
		const char *name = policy_family_name(d->policy, f);
		int64_t at = warm_base_stored_at(d->warm, f);

		out(p, "<tr data-family=\"");
		esc(p, name);
		out(p, "\"><td class=\"name\">");
		esc(p, name);
		out(p, "</td><td class=\"entries\">%lld</td><td class=\"bytes\">%lld</td>",
		    (long long)u.entries[f], (long long)u.bytes[f]);
		out(p, "<td class=\"base-age\">");
		if (at >= 0)
			put_age(p, (double)(now - at));
		else
			out(p, "<span class=\"muted\">none</span>");
		out(p,
		    "</td><td class=\"hits\">%llu</td><td class=\"misses\">%llu</td>"
		    "<td class=\"stale\">%llu</td>",
		    stats_get(d->stats, f, STATS_HITS), stats_get(d->stats, f, STATS_MISSES),
		    stats_get(d->stats, f, STATS_STALE));
		out(p, "<td><button type=\"button\" class=\"purge\" hidden data-family=\"");
		esc(p, name);
		out(p, "\">Purge</button></td></tr>");
	}
	out(p, "</tbody></table>");
}

struct errors {
	struct page *p;
	int n;
};

static void error_item(void *arg, double at, enum log_level level, const char *text)
{
	struct errors *e = arg;
	struct page *p = e->p;

	e->n++;
	out(p, "<li>");
	put_time(p, at);
	out(p, " <span class=\"%s\">%s</span> ", level == LOG_LVL_ERROR ? "bad" : "muted",
	    log_level_name(level));
	esc(p, text);
	out(p, "</li>");
}

static void about_section(struct page *p, const struct front_deps *d)
{
	struct versions v;

	versions_get(&v);
	struct errors e = { p, 0 };

	out(p, "<h2>Last warnings and errors</h2><ol id=\"errors\">");
	log_recent(error_item, &e);
	out(p, "</ol>%s<h2>This daemon</h2>",
	    e.n == 0 ? "<p class=\"muted\">None since the start.</p>" : "");
	out(p, "<dl><dt>Up for</dt><dd id=\"uptime\">");
	put_age(p, (double)time(NULL) - d->started);
	out(p, "</dd><dt>Started</dt><dd>");
	put_time(p, d->started);
	out(p, "</dd></dl><h2>Versions</h2><dl id=\"versions\">");
	out(p, "<dt>kaleidod</dt><dd id=\"version\">%s</dd>", v.kaleidod);
	out(p, "<dt>libmicrohttpd</dt><dd>%s</dd><dt>libcurl</dt><dd>%s (", v.libmicrohttpd,
	    v.libcurl);
	esc(p, v.libcurl_tls);
	out(p, ")</dd><dt>SQLite</dt><dd>%s</dd><dt>cJSON</dt><dd>%s</dd>", v.sqlite, v.cjson);
	out(p, "<dt>zlib</dt><dd>%s</dd><dt>GnuTLS</dt><dd>%s</dd></dl>", v.zlib, v.gnutls);
}

char *statuspage_html(const struct front_deps *d, const char *query, unsigned conns, size_t *len)
{
	struct page p = { 0 };
	unsigned refresh = refresh_of(query);

	out(&p, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
		"<meta name=\"viewport\" content=\"width=device-width\">");
	if (refresh > 0)
		out(&p, "<meta http-equiv=\"refresh\" content=\"%u\">", refresh);
	out(&p, "<title>kaleidod status</title><style>");
	put(&p, style, sizeof(style) - 1);
	out(&p, "</style><script src=\"status.js\" defer></script></head><body>");
	out(&p, "<h1>kaleidod</h1><p class=\"muted\">%s",
	    refresh > 0 ? "This page reloads itself every " : "Reload for new figures.");
	if (refresh > 0)
		out(&p, "%u s.", refresh);
	out(&p, " Machine-readable: <a href=\"stats\">stats</a>, <a href=\"metrics\">metrics</a>, "
		"<a href=\"health\">health</a>.</p>");
	upstream_section(&p, d);
	traffic_section(&p, d, conns);
	families_section(&p, d);
	about_section(&p, d);
	out(&p, "</body></html>\n");
	if (p.oom) {
		membuf_free(&p.mb, 0);
		return NULL;
	}
	*len = p.mb.len;
	return p.mb.data;
}

/* Unhides the purge buttons and posts {"family": NAME} for each. */
static const char script[] =
	"\"use strict\";\n"
	"document.querySelectorAll(\"button.purge\").forEach(function (b) {\n"
	"  var out = document.getElementById(\"purge-result\");\n"
	"  b.hidden = false;\n"
	"  b.addEventListener(\"click\", function () {\n"
	"    b.disabled = true;\n"
	"    fetch(\"purge\", {method: \"POST\", credentials: \"same-origin\",\n"
	"      headers: {\"Content-Type\": \"application/json\"},\n"
	"      body: JSON.stringify({family: b.dataset.family})})\n"
	"    .then(function (r) {\n"
	"      return r.json().then(function (j) { return {status: r.status, body: j}; });\n"
	"    }).then(function (a) {\n"
	"      out.textContent = a.status === 200 ?\n"
	"        \"Purged \" + a.body.purged + \" entries of \" + b.dataset.family + \".\" :\n"
	"        \"Purge refused: \" + a.body.error + \": \" + a.body.detail;\n"
	"    }).catch(function (e) {\n"
	"      out.textContent = \"Purge failed: \" + e;\n"
	"    }).finally(function () { b.disabled = false; });\n"
	"  });\n"
	"});\n";

char *statuspage_script(size_t *len)
{
	char *s = strdup(script);

	*len = s != NULL ? strlen(s) : 0;
	return s;
}
