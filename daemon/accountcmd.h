/*
 * accountcmd: the commands that edit the gateway's accounts file
 * (kaleidod account add|list|remove) and kaleidod --hash-secret.
 *
 * They work on the file while the daemon runs (accounts.c locks it and
 * replaces it whole); a SIGHUP (systemctl reload kaleidod) makes a change
 * take effect.  Exit statuses: 0 done, 1 failed, 2 bad usage.
 */
#ifndef KD_ACCOUNTCMD_H
#define KD_ACCOUNTCMD_H

/* argv[0] is "account". */
int accountcmd_main(int argc, char **argv);
/* Reads a secret from stdin (one line) and prints its crypt(5) hash. */
int accountcmd_hash_secret(void);

#endif
