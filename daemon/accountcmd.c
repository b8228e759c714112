/*
 * accountcmd: kaleidod account add|list|remove, kaleidod --hash-secret.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "accountcmd.h"
#include "accounts.h"
#include "config.h"
#include "localtoken.h"

static void usage(FILE *out)
{
	fprintf(out, "usage: kaleidod account [--config FILE | --accounts FILE] add NAME --scope "
		     "read[,write][,admin]\n"
		     "                        [--path /PREFIX]... [--rate N/s|N/m|N/h]\n"
		     "                        [--cert-subject DN] [--comment TEXT]\n"
		     "       kaleidod account [--config FILE | --accounts FILE] list\n"
		     "       kaleidod account [--config FILE | --accounts FILE] remove NAME\n"
		     "\n"
		     "add makes a random secret, prints it once, and stores only its hash.  The\n"
		     "daemon takes a change at its next reload (SIGHUP).  See kaleidod(8).\n");
}

/* The accounts file: --accounts, else [gateway] accounts of --config. */
static char *accounts_path(const char *file, const char *config)
{
	struct config *cfg;
	char err[1024], *path = NULL;

	if (file != NULL)
		return strdup(file);
	if (config == NULL) {
		fprintf(stderr, "kaleidod: name the accounts file: --accounts FILE, or --config "
				"FILE with [gateway] accounts\n");
		return NULL;
	}
	if ((cfg = config_new()) == NULL || config_load_file(cfg, config, err, sizeof(err)) < 0) {
		fprintf(stderr, "kaleidod: %s\n", cfg ? err : "out of memory");
	} else if (cfg->accounts_file == NULL) {
		fprintf(stderr, "kaleidod: %s sets no [gateway] accounts\n", config);
	} else {
		path = strdup(cfg->accounts_file);
	}
	config_free(&cfg);
	return path;
}

/* A secret for an account: 256 random bits, like a token, its own prefix. */
static int new_secret(char *out, size_t len)
{
	if (localtoken_new(out, len) < 0)
		return -1;
	memcpy(out, "ks_", 3);
	return 0;
}

static int add(const char *path, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "scope", required_argument, NULL, 's' },
		{ "path", required_argument, NULL, 'p' },
		{ "rate", required_argument, NULL, 'r' },
		{ "comment", required_argument, NULL, 'm' },
		{ "cert-subject", required_argument, NULL, 'S' },
		{ NULL, 0, NULL, 0 },
	};
	const char *scope = NULL, *rate = NULL, *comment = NULL, *cert = NULL, *name;
	char paths[1024] = "", secret[LOCALTOKEN_LEN + 1], err[1024], *hash;
	int ch, rc;

	optind = 0; /* 0: glibc starts its scan afresh (the first one stopped early) */
	while ((ch = getopt_long(argc, argv, "s:p:r:m:S:", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			scope = optarg;
			break;
		case 'p':
			if (strlen(paths) + strlen(optarg) + 2 > sizeof(paths)) {
				fprintf(stderr, "kaleidod: too many paths\n");
				return 2;
			}
			if (paths[0] != '\0')
				strcat(paths, ",");
			strcat(paths, optarg);
			break;
		case 'r':
			rate = optarg;
			break;
		case 'm':
			comment = optarg;
			break;
		case 'S':
			cert = optarg;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || scope == NULL) {
		fprintf(stderr, "kaleidod: account add takes one NAME and --scope\n");
		usage(stderr);
		return 2;
	}
	name = argv[optind];
	if (new_secret(secret, sizeof(secret)) < 0 ||
	    (hash = accounts_hash_secret(secret, err, sizeof(err))) == NULL) {
		fprintf(stderr, "kaleidod: cannot make a secret: %s\n", err);
		return 1;
	}
	rc = accounts_file_add(path, name, hash, scope, paths, rate, cert, comment, err,
			       sizeof(err));
	free(hash);
	if (rc < 0) {
		fprintf(stderr, "kaleidod: %s\n", err);
		explicit_bzero(secret, sizeof(secret));
		return 1;
	}
	printf("client id:     %s\n"
	       "client secret: %s\n"
	       "\n"
	       "The secret is shown this once; kaleidod keeps only its hash.  Reload the\n"
	       "daemon (systemctl reload kaleidod) for the account to take effect.\n",
	       name, secret);
	explicit_bzero(secret, sizeof(secret));
	return 0;
}

static int list(const char *path)
{
	struct accounts *as;
	char err[1024], scopes[32];

	if (accounts_load(path, &as, err, sizeof(err)) < 0) {
		fprintf(stderr, "kaleidod: %s\n", err);
		return 1;
	}
	printf("%-20s %-16s %-8s %-24s %s\n", "NAME", "SCOPES", "RATE", "PATHS", "COMMENT");
	for (size_t i = 0; i < accounts_count(as); i++) {
		struct account *a = accounts_at(as, i);
		const char *rate = account_rate_text(a), *paths = account_paths_text(a);

		accounts_scopes_text(account_scopes(a), scopes, sizeof(scopes));
		printf("%-20s %-16s %-8s %-24s %s\n", account_name(a), scopes, rate[0] ? rate : "-",
		       paths[0] ? paths : "-", account_comment(a));
	}
	accounts_free(&as);
	return 0;
}

int accountcmd_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "accounts", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = NULL, *file = NULL, *cmd;
	char err[1024], *path;
	int ch, rc = 2;

	/* Options up to the subcommand; "+" stops at the first word. */
	optind = 1;
	while ((ch = getopt_long(argc, argv, "+c:f:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			config = optarg;
			break;
		case 'f':
			file = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind];
	if ((path = accounts_path(file, config)) == NULL)
		return 1;
	if (strcmp(cmd, "add") == 0) {
		rc = add(path, argc - optind, argv + optind);
	} else if (strcmp(cmd, "list") == 0 && optind == argc - 1) {
		rc = list(path);
	} else if (strcmp(cmd, "remove") == 0 && optind == argc - 2) {
		rc = 0;
		if (accounts_file_remove(path, argv[optind + 1], err, sizeof(err)) < 0) {
			fprintf(stderr, "kaleidod: %s\n", err);
			rc = 1;
		} else {
			printf("removed %s; reload the daemon (systemctl reload kaleidod) to "
			       "revoke its tokens\n",
			       argv[optind + 1]);
		}
	} else {
		usage(stderr);
	}
	free(path);
	return rc;
}

int accountcmd_hash_secret(void)
{
	char line[4096], err[1024], *hash;
	size_t n;

	if (fgets(line, sizeof(line), stdin) == NULL) {
		fprintf(stderr, "kaleidod: --hash-secret reads the secret from stdin\n");
		return 1;
	}
	n = strcspn(line, "\r\n");
	line[n] = '\0';
	if (n == 0) {
		fprintf(stderr, "kaleidod: the secret is empty\n");
		return 1;
	}
	hash = accounts_hash_secret(line, err, sizeof(err));
	explicit_bzero(line, sizeof(line));
	if (hash == NULL) {
		fprintf(stderr, "kaleidod: %s\n", err);
		return 1;
	}
	printf("%s\n", hash);
	free(hash);
	return 0;
}
